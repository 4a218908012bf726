# The compiled core (csrc/bindings.cpp): argument records, dtype enums and one entry point
# per kernel. Its names are typed where python/mper/ops wraps them.
from typing import Any

def __getattr__(name: str) -> Any: ...
