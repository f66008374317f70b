"""The ``backbone`` package under a second name, for trees where another ``backbone`` shadows it.

A Mammoth checkout has a top-level ``backbone/`` folder of its own and puts
its root first on ``sys.path``, so ``import backbone`` there finds Mammoth's.
``import backbone_reference`` loads this package's code from its own folder
whatever ``sys.path`` says, as a separate copy with its own registry.

Example:
    >>> import backbone_reference
    >>> backbone_reference.resnet18(10).num_classes
    10
    >>> backbone_reference.MammothBackbone.__module__
    'backbone_reference.base'
"""

from pathlib import Path

# Serve the submodules (base, flat, models, ...) from the real package's
# folder, then run its __init__ here: its imports are relative, so they
# resolve inside this package.
__path__ = [str(Path(__file__).resolve().parent.parent / "backbone")]
_init = Path(__path__[0]) / "__init__.py"
exec(compile(_init.read_text(), str(_init), "exec"))
