"""Offline tooling around the Pulumi program (not shipped in the library): the render under
Pulumi's mocks (``engine``, ``python -m render``), the object-level diff of two renders (``diff``),
the cloud lookups' stand-ins (``stubs``) and the generated config reference (``reference``)."""

from render.engine import RenderedObject, RenderResult, render_stack

__all__ = ["RenderResult", "RenderedObject", "render_stack"]
