// Python bindings: the argument records and one entry point per kernel and device.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;
using namespace mper;

namespace {

#ifdef MPER_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// Binds `name` to the CPU kernel and `name` + "_cuda" to the CUDA kernel (when built).
template <typename Args>
void bind_kernel(py::module_& m, const char* name, void (*cpu_kernel)(const Args&), void (*cuda_kernel)(const Args&)) {
  m.def(name, cpu_kernel, py::arg("args"), py::call_guard<py::gil_scoped_release>());
  if (cuda_kernel)
    m.def((std::string(name) + "_cuda").c_str(), cuda_kernel, py::arg("args"),
          py::call_guard<py::gil_scoped_release>());
}

#ifdef MPER_WITH_CUDA
#define MPER_CUDA_KERNEL(fn) &cuda::fn
#else
#define MPER_CUDA_KERNEL(fn) nullptr
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mper compiled core: fused prototype kernels (CPU with OpenMP, CUDA when built)";
  m.attr("with_cuda") = kWithCuda;
  m.attr("head_workspace_floats") = kHeadWorkspaceFloats;
  m.attr("max_image_voxels") = kMaxImageVoxels;
  m.attr("cuda_max_head_depth") = kCudaMaxHeadDepth;
#ifdef MPER_WITH_CUDA
  m.attr("cuda_runtime_version") = cuda::runtime_version();
  m.def("cuda_driver_version", &cuda::driver_version);
#else
  m.attr("cuda_runtime_version") = py::none();
#endif
  m.def("cuda_version_problem", &cuda_version_problem, py::arg("driver"), py::arg("runtime"));

  py::enum_<DType>(m, "DType")
      .value("float32", DType::Float32)
      .value("float16", DType::Float16)
      .value("bfloat16", DType::BFloat16)
      .value("float64", DType::Float64);

  py::class_<FeatureView>(m, "FeatureView")
      .def(py::init<>())
      .def_readwrite("data", &FeatureView::data)
      .def_readwrite("batch_stride", &FeatureView::batch_stride)
      .def_readwrite("channel_stride", &FeatureView::channel_stride)
      .def_readwrite("batch", &FeatureView::batch)
      .def_readwrite("depth", &FeatureView::depth)
      .def_readwrite("voxels", &FeatureView::voxels);

  py::class_<HeadArgs>(m, "HeadArgs")
      .def(py::init<>())
      .def_readwrite("feat", &HeadArgs::feat)
      .def_readwrite("prototypes", &HeadArgs::prototypes)
      .def_readwrite("classes", &HeadArgs::classes)
      .def_readwrite("protos_per_class", &HeadArgs::protos_per_class)
      .def_readwrite("inv_tau", &HeadArgs::inv_tau)
      .def_readwrite("inv_nce_tau", &HeadArgs::inv_nce_tau)
      .def_readwrite("ignore_index", &HeadArgs::ignore_index)
      .def_readwrite("logits", &HeadArgs::logits)
      .def_readwrite("assign", &HeadArgs::assign)
      .def_readwrite("loss", &HeadArgs::loss)
      .def_readwrite("count", &HeadArgs::count)
      .def_readwrite("grad_logits", &HeadArgs::grad_logits)
      .def_readwrite("grad_loss", &HeadArgs::grad_loss)
      .def_readwrite("grad_feat", &HeadArgs::grad_feat)
      .def_readwrite("workspace", &HeadArgs::workspace)
      .def_readwrite("dtype", &HeadArgs::dtype)
      .def_readwrite("stream", &HeadArgs::stream)
      .def_readwrite("threads", &HeadArgs::threads);

  py::class_<AccumulateArgs>(m, "AccumulateArgs")
      .def(py::init<>())
      .def_readwrite("emb", &AccumulateArgs::emb)
      .def_readwrite("labels", &AccumulateArgs::labels)
      .def_readwrite("assign", &AccumulateArgs::assign)
      .def_readwrite("mask", &AccumulateArgs::mask)
      .def_readwrite("classes", &AccumulateArgs::classes)
      .def_readwrite("protos_per_class", &AccumulateArgs::protos_per_class)
      .def_readwrite("sums", &AccumulateArgs::sums)
      .def_readwrite("counts", &AccumulateArgs::counts)
      .def_readwrite("dtype", &AccumulateArgs::dtype)
      .def_readwrite("stream", &AccumulateArgs::stream)
      .def_readwrite("threads", &AccumulateArgs::threads);

  py::class_<EmaArgs>(m, "EmaArgs")
      .def(py::init<>())
      .def_readwrite("prototypes", &EmaArgs::prototypes)
      .def_readwrite("sums", &EmaArgs::sums)
      .def_readwrite("counts", &EmaArgs::counts)
      .def_readwrite("rows", &EmaArgs::rows)
      .def_readwrite("depth", &EmaArgs::depth)
      .def_readwrite("momentum", &EmaArgs::momentum)
      .def_readwrite("dtype", &EmaArgs::dtype)
      .def_readwrite("stream", &EmaArgs::stream);

  py::enum_<LabelDType>(m, "LabelDType")
      .value("uint8", LabelDType::UInt8)
      .value("int8", LabelDType::Int8)
      .value("int16", LabelDType::Int16)
      .value("int32", LabelDType::Int32)
      .value("int64", LabelDType::Int64);

  py::class_<ComponentArgs>(m, "ComponentArgs")
      .def(py::init<>())
      .def_readwrite("labels", &ComponentArgs::labels)
      .def_readwrite("out", &ComponentArgs::out)
      .def_readwrite("batch", &ComponentArgs::batch)
      .def_readwrite("depth", &ComponentArgs::depth)
      .def_readwrite("height", &ComponentArgs::height)
      .def_readwrite("width", &ComponentArgs::width)
      .def_readwrite("classes", &ComponentArgs::classes)
      .def_readwrite("dtype", &ComponentArgs::dtype)
      .def_readwrite("workspace", &ComponentArgs::workspace)
      .def_readwrite("stream", &ComponentArgs::stream)
      .def_readwrite("threads", &ComponentArgs::threads);

  bind_kernel<HeadArgs>(m, "head_forward", &cpu::head_forward, MPER_CUDA_KERNEL(head_forward));
  bind_kernel<HeadArgs>(m, "head_backward", &cpu::head_backward, MPER_CUDA_KERNEL(head_backward));
  bind_kernel<AccumulateArgs>(m, "accumulate", &cpu::accumulate, MPER_CUDA_KERNEL(accumulate));
  bind_kernel<EmaArgs>(m, "ema_update", &cpu::ema_update, MPER_CUDA_KERNEL(ema_update));
  bind_kernel<ComponentArgs>(m, "largest_component", &cpu::largest_component, MPER_CUDA_KERNEL(largest_component));
}
