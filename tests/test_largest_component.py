"""`largest_component` against the scipy reference: random, structured, edge-case,
tied and adversarial label maps (serpentines, spirals, checkerboards, full and thin
maps, which grow deep union-find trees), 2D and 3D, every accepted dtype; connectivity,
bad input, the size limit, opcheck, torch.compile; the same parity on a GPU (marked cuda)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import mper.reference as ref
from mper import ops

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
SHAPES = [  # (B, *spatial), C
    ((3, 17, 23), 3),
    ((2, 1, 40), 2),
    ((2, 40, 1), 4),
    ((2, 9, 11, 13), 4),
    ((1, 6, 1, 9), 3),
    ((2, 5, 7, 33), 2),
]


def random_labels(shape, num_classes, seed, background=0.5) -> torch.Tensor:
    """Uniform classes with a share of background: many tiny components and many ties."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.randint(1, max(num_classes, 2), shape, generator=generator) % num_classes
    return torch.where(torch.rand(shape, generator=generator) < background, 0, classes)


def smooth_labels(shape, num_classes, seed, sigma=2.0, foreground=None) -> torch.Tensor:
    """Blobs: each voxel takes the class of its highest smoothed noise field, background
    where even that is low; gives dozens of components of varied size per class (in 3D
    a foreground share of 0.2 keeps the blobs from fusing into one)."""
    rng = np.random.default_rng(seed)
    spatial = shape[1:]
    foreground = foreground or (0.5 if len(spatial) == 2 else 0.2)
    fields = rng.standard_normal((num_classes - 1, shape[0], *spatial))
    fields = ndimage.gaussian_filter(fields, (0, 0) + (sigma,) * len(spatial))
    top = fields.max(axis=0)
    labels = np.where(top > np.quantile(top, 1 - foreground), fields.argmax(axis=0) + 1, 0)
    return torch.from_numpy(labels)


def component_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    structure = ndimage.generate_binary_structure(labels.dim() - 1, labels.dim() - 1)
    return [ndimage.label(image == c, structure)[1] for image in labels.numpy() for c in range(1, num_classes)]


def assert_matches_reference(labels: torch.Tensor, num_classes: int, **options) -> torch.Tensor:
    got = ops.largest_component(labels, num_classes, **options)
    want = ref.largest_component(labels, num_classes, **options)
    assert got.dtype == labels.dtype and got.shape == labels.shape and got.device == labels.device
    assert torch.equal(got.cpu(), want.cpu())
    return got


@pytest.mark.parametrize("shape,num_classes", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("background", [0.2, 0.6])
def test_random_labels_match_reference(shape, num_classes, dtype, background):
    labels = random_labels(shape, num_classes, seed=len(shape) + num_classes, background=background)
    assert_matches_reference(labels.to(dtype), num_classes)


@pytest.mark.parametrize("shape,num_classes", [((3, 64, 48), 4), ((2, 24, 28, 20), 2), ((2, 20, 22, 18), 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_structured_labels_match_reference(shape, num_classes, dtype):
    labels = smooth_labels(shape, num_classes, seed=num_classes)
    assert min(component_counts(labels, num_classes)) >= 5
    got = assert_matches_reference(labels.to(dtype), num_classes)
    assert (got != 0).sum() < (labels != 0).sum()


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_and_full_maps(spatial, dtype):
    empty = torch.zeros((2, *spatial), dtype=dtype)
    assert torch.equal(ops.largest_component(empty, 3), empty)
    full = torch.full((2, *spatial), 2, dtype=dtype)
    assert torch.equal(ops.largest_component(full, 3), full)
    halves = full.clone()
    halves[1] = 1
    assert torch.equal(ops.largest_component(halves, 3), halves)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_voxels(dtype):
    one = torch.ones((1, 1, 1), dtype=dtype)
    assert torch.equal(ops.largest_component(one, 2), one)
    assert torch.equal(
        ops.largest_component(torch.ones((3, 1, 1, 1), dtype=dtype), 2), torch.ones((3, 1, 1, 1), dtype=dtype)
    )
    lone = torch.zeros((1, 4, 5, 6), dtype=dtype)
    lone[0, 3, 4, 5] = 1
    assert torch.equal(ops.largest_component(lone, 2), lone)


def test_ties_keep_the_first_component_in_scan_order():
    labels = torch.zeros((1, 6, 8), dtype=torch.int64)
    labels[0, 0, 6:8] = 1  # first voxel (0, 6): first in scan order
    labels[0, 1:3, 0] = 1  # same size, starts later at (1, 0)
    labels[0, 4, 2:4] = 1  # same size again
    labels[0, 5, 7] = 2
    labels[0, 3, 6] = 2  # equal singletons of class 2: (3, 6) comes first
    want = torch.zeros_like(labels)
    want[0, 0, 6:8] = 1
    want[0, 3, 6] = 2
    assert torch.equal(ops.largest_component(labels, 3), want)
    assert torch.equal(ref.largest_component(labels, 3), want)


def test_ties_are_decided_by_the_first_voxel():
    # two 7-voxel components of class 1: a "U" whose arms only meet on the last row and
    # reach further left, and a hook whose first voxel, (0, 4), comes first in scan order
    labels = torch.zeros((1, 1, 4, 9), dtype=torch.int32)
    u_shape = [(1, 0), (2, 0), (3, 0), (3, 1), (3, 2), (2, 2), (1, 2)]
    hook = [(0, 4), (0, 5), (0, 6), (0, 7), (0, 8), (1, 8), (2, 8)]
    for y, x in u_shape + hook:
        labels[0, 0, y, x] = 1
    want = labels.clone()
    for y, x in u_shape:
        want[0, 0, y, x] = 0
    assert torch.equal(ops.largest_component(labels, 2), want)
    assert_matches_reference(labels, 2)


@pytest.mark.parametrize(
    "voxels",
    [
        [(0, 0), (1, 1), (2, 2)],  # down-right diagonal
        [(0, 3), (1, 2), (2, 1)],  # down-left diagonal
        [(0, 0, 0), (1, 1, 1), (2, 2, 2)],  # 3D corners
        [(0, 2, 0), (1, 1, 1), (2, 0, 2)],
        [(0, 0, 2), (1, 1, 1), (1, 2, 0)],
    ],
)
def test_full_connectivity(voxels):
    """Corner neighbours join (8 in 2D, 26 in 3D): the chain of 3 beats a pair."""
    ndim = len(voxels[0])
    labels = torch.zeros((1,) + (5,) * ndim, dtype=torch.int64)
    for voxel in voxels:
        labels[(0, *voxel)] = 1
    labels[(0,) + (4,) * (ndim - 1) + (3,)] = 1
    labels[(0,) + (4,) * ndim] = 1
    want = torch.zeros_like(labels)
    for voxel in voxels:
        want[(0, *voxel)] = 1
    assert torch.equal(ops.largest_component(labels, 2), want)
    assert_matches_reference(labels, 2)


def test_classes_do_not_join_each_other():
    labels = torch.tensor([[[1, 1, 2, 2, 2, 1]]])
    assert torch.equal(ops.largest_component(labels, 3), torch.tensor([[[1, 1, 2, 2, 2, 0]]]))


def test_one_class_leaves_only_background():
    labels = torch.zeros((2, 4, 4), dtype=torch.uint8)
    assert torch.equal(ops.largest_component(labels, 1), labels)
    assert torch.equal(ops.largest_component(torch.ones_like(labels), 1, check_labels=False), labels)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64])
def test_labels_out_of_range_raise_or_count_as_background(dtype):
    labels = random_labels((2, 9, 10), 3, seed=5).to(dtype)
    labels[0, 3, 3:6] = 3
    labels[1, 0, 0] = -1
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ops.largest_component(labels, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ref.largest_component(labels, 3)
    got = assert_matches_reference(labels, 3, check_labels=False)
    assert (got[labels < 0] == 0).all() and (got[labels >= 3] == 0).all()


def test_uint8_labels_above_the_classes_count_as_background():
    labels = torch.tensor([[[1, 200, 1, 1]]], dtype=torch.uint8)
    want = torch.tensor([[[0, 0, 1, 1]]], dtype=torch.uint8)
    assert torch.equal(ops.largest_component(labels, 2, check_labels=False), want)


def test_non_contiguous_input():
    labels = smooth_labels((2, 20, 30), 3, seed=1)
    transposed = labels.transpose(1, 2)
    assert not transposed.is_contiguous()
    got = assert_matches_reference(transposed, 3)
    assert got.is_contiguous()


def test_empty_batch():
    labels = torch.zeros((0, 4, 5), dtype=torch.int64)
    assert ops.largest_component(labels, 2).shape == (0, 4, 5)


@pytest.mark.parametrize(
    "labels,num_classes,error,match",
    [
        (torch.zeros((1, 4, 4)), 2, TypeError, "integer label map"),
        (torch.zeros((1, 4, 4), dtype=torch.bool), 2, TypeError, "integer label map"),
        (torch.zeros((4, 4), dtype=torch.int64), 2, ValueError, r"\(B, H, W\) or \(B, D, H, W\)"),
        (torch.zeros((1, 1, 2, 3, 4), dtype=torch.int64), 2, ValueError, r"\(B, H, W\) or \(B, D, H, W\)"),
        (torch.zeros((1, 4, 4), dtype=torch.int64), 0, ValueError, "num_classes"),
        (torch.zeros((1, 4, 4), dtype=torch.int64), 2.0, ValueError, "num_classes"),
        (np.zeros((1, 4, 4), dtype=np.int64), 2, TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_is_refused(labels, num_classes, error, match):
    with pytest.raises(error, match=match):
        ops.largest_component(labels, num_classes)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_opcheck(dtype):
    for labels, num_classes in (
        (smooth_labels((2, 10, 12), 3, seed=2), 3),
        (random_labels((2, 4, 5, 6), 2, seed=3), 2),
    ):
        torch.library.opcheck(torch.ops.mper.largest_component.default, (labels.to(dtype), num_classes))


def test_torch_compile_fullgraph():
    labels = smooth_labels((2, 12, 14, 10), 3, seed=4)

    @torch.compile(fullgraph=True)
    def clean(x):
        return ops.largest_component(x, 3) * 1

    assert torch.equal(clean(labels), ref.largest_component(labels, 3))


label_maps = st.builds(
    lambda spatial, batch, num_classes, background, seed, dtype: (
        random_labels((batch, *spatial), num_classes, seed, background).to(dtype),
        num_classes,
    ),
    st.one_of(
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    ),
    st.integers(1, 3),
    st.integers(1, 4),
    st.sampled_from([0.0, 0.3, 0.7]),
    st.integers(0, 10_000),
    st.sampled_from(DTYPES),
)


@settings(max_examples=80, deadline=None)
@given(label_maps)
def test_any_label_map_matches_reference(problem):
    labels, num_classes = problem
    assert_matches_reference(labels, num_classes)


# ---------------------------------------------------------------- adversarial maps


def serpentine(spatial: tuple[int, ...]) -> np.ndarray:
    """A 1-voxel-wide path along every other row, turning at alternate ends; in 3D one
    such path in every other slice, the slices joined by one voxel in between."""
    *slices, height, width = spatial
    plane = np.zeros((height, width), bool)
    plane[::2] = True
    for turn, y in enumerate(range(1, height, 2)):
        plane[y, width - 1 if turn % 2 == 0 else 0] = True
    if not slices:
        return plane
    volume = np.zeros(spatial, bool)
    volume[::2] = plane
    volume[1::2, 0, 0] = True
    return volume


def spiral(spatial: tuple[int, ...]) -> np.ndarray:
    """A 1-voxel-wide square spiral walked inwards with one voxel between its turns, in
    every slice of a volume (neighbouring slices touch along the whole path)."""
    *_, height, width = spatial
    plane = np.zeros((height, width), bool)
    y = x = dy = 0
    dx = 1
    plane[0, 0] = True
    turns = 0
    while turns < 2:
        ny, nx, ay, ax = y + dy, x + dx, y + 2 * dy, x + 2 * dx
        inside = 0 <= ny < height and 0 <= nx < width
        blocked = 0 <= ay < height and 0 <= ax < width and plane[ay, ax]
        if inside and not plane[ny, nx] and not blocked:
            y, x, turns = ny, nx, 0
            plane[y, x] = True
        else:
            dy, dx, turns = dx, -dy, turns + 1
    return np.broadcast_to(plane, spatial)


def checkerboard(spatial: tuple[int, ...]) -> np.ndarray:
    """Voxels whose coordinates sum to an even number: runs of one voxel, every one of
    them joined to the next through corners only."""
    return np.indices(spatial).sum(axis=0) % 2 == 0


def full(spatial: tuple[int, ...]) -> np.ndarray:
    return np.ones(spatial, bool)


PATTERNS = {"serpentine": serpentine, "spiral": spiral, "checkerboard": checkerboard, "full": full}


@st.composite
def adversarial_maps(draw, max_side_2d: int, max_side_3d: int):
    """A batch of pattern maps: the pattern in class 1, its complement background or class
    2, turned and flipped at random, some voxels knocked out, any accepted dtype. Sides of
    1 give long thin maps."""
    if draw(st.booleans()):
        spatial = (draw(st.integers(1, max_side_2d)), draw(st.integers(1, max_side_2d)))
    else:
        spatial = tuple(draw(st.integers(1, max_side_3d)) for _ in range(3))
    num_classes = draw(st.integers(2, 3))
    images = []
    for _ in range(draw(st.integers(1, 2))):
        axes = draw(st.permutations(range(len(spatial))))
        shape = tuple(spatial[a] for a in np.argsort(axes))  # transposed by `axes`, back to `spatial`
        mask = np.transpose(PATTERNS[draw(st.sampled_from(sorted(PATTERNS)))](shape), axes)
        mask = np.flip(mask, [a for a in range(len(spatial)) if draw(st.booleans())])
        image = np.where(mask, 1, num_classes - 1 if num_classes == 3 else 0)
        holes = draw(st.integers(0, 3))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        image.flat[rng.integers(0, image.size, holes)] = 0
        images.append(image)
    labels = torch.from_numpy(np.stack(images).astype(np.int64))
    return labels.to(draw(st.sampled_from(DTYPES))), num_classes


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("spatial", [(17, 23), (5, 9, 11)])
def test_adversarial_patterns_are_one_large_component(pattern, spatial):
    """Each pattern is a single component (full connectivity, by scipy) covering at least a
    third of the map, so that the union-find has to join all of it."""
    mask = PATTERNS[pattern](spatial)
    _, count = ndimage.label(mask, ndimage.generate_binary_structure(len(spatial), len(spatial)))
    assert count == 1 and mask.sum() >= mask.size // 3
    if pattern == "checkerboard":
        assert not (mask[..., 1:] & mask[..., :-1]).any()  # runs of one voxel


@settings(max_examples=60, deadline=None)
@given(adversarial_maps(max_side_2d=24, max_side_3d=8))
def test_adversarial_maps_match_reference(problem):
    labels, num_classes = problem
    assert_matches_reference(labels, num_classes)


# ---------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_reference(dtype):
    cases = [(random_labels(shape, c, seed=c), c) for shape, c in SHAPES]
    cases += [(smooth_labels((3, 96, 80), 4, seed=1), 4), (smooth_labels((2, 40, 44, 36), 2, seed=2), 2)]
    cases += [(torch.zeros((2, 3, 4, 5), dtype=torch.int64), 2), (torch.ones((2, 7, 70), dtype=torch.int64), 2)]
    for labels, num_classes in cases:
        assert_matches_reference(labels.to(dtype).cuda(), num_classes)


@pytest.mark.cuda
def test_cuda_la_sized_batch_matches_reference():
    labels = smooth_labels((2, 112, 112, 80), 2, seed=3, sigma=4.0)
    assert min(component_counts(labels, 2)) >= 10
    assert_matches_reference(labels.cuda(), 2)


@pytest.mark.cuda
def test_cuda_ties_and_connectivity():
    labels = torch.zeros((1, 6, 70), dtype=torch.int64)
    labels[0, 0, 40:42] = 1
    labels[0, 1:3, 0] = 1
    labels[0, 2, 31] = 2
    labels[0, 3, 32] = 2  # joins (2, 31) across the edge of a 32-voxel stretch
    labels[0, 5, 60] = 2
    assert_matches_reference(labels.cuda(), 3)


@pytest.mark.cuda
def test_cuda_out_of_range_and_no_host_sync():
    labels = random_labels((2, 10, 12, 14), 3, seed=6).cuda()
    labels[0, 0, 0, :5] = 7
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ops.largest_component(labels, 3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = ops.largest_component(labels, 3, check_labels=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got.cpu(), ref.largest_component(labels, 3, check_labels=False).cpu())


@pytest.mark.cuda
@settings(max_examples=40, deadline=None)
@given(adversarial_maps(max_side_2d=300, max_side_3d=48))
def test_cuda_adversarial_maps_match_reference(problem):
    """Deep union-find trees spread over many warps: the path halving in merge and flatten."""
    labels, num_classes = problem
    assert_matches_reference(labels.cuda(), num_classes)


@pytest.mark.cuda
def test_cuda_graph_capture_and_compile():
    labels = smooth_labels((2, 20, 24, 16), 3, seed=7).cuda()
    want = ref.largest_component(labels, 3)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.largest_component(labels, 3, check_labels=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.largest_component(labels, 3, check_labels=False)
    graph.replay()
    assert torch.equal(captured, want)
    compiled = torch.compile(lambda x: ops.largest_component(x, 3), fullgraph=True)
    assert torch.equal(compiled(labels), want)
    torch.library.opcheck(torch.ops.mper.largest_component.default, (labels, 3))
