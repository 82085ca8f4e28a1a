"""Offline tooling around the Pulumi program (not shipped in the library): the render under
Pulumi's mocks (``engine``, ``python -m render``) and its review summary (``summary``), the
object-level diff of two renders (``diff``), the cloud lookups' stand-ins (``stubs``), and the
generated files: the config reference (``reference``), the components' TypedDict args
(``component_args``) and their reference from the package schema (``component_docs``)."""

from render.engine import RenderedObject, RenderResult, render_stack

__all__ = ["RenderResult", "RenderedObject", "render_stack"]
