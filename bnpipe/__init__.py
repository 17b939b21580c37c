"""bnpipe: does BatchNormalization help a small MLP on MNIST? From Python (a notebook)::

    import bnpipe
    run = bnpipe.run("params.yaml", grid={"seeds": [0, 1]}, train={"epochs": 1})
    run.decisions

Importing bnpipe imports nothing heavy: ``run``, ``load`` and ``Run`` come from
:mod:`bnpipe.session` at first use (MLflow, Prefect and TensorFlow when a run needs them).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnpipe.session import Run, load, run, stop

__all__ = ["Run", "load", "run", "stop"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bnpipe import session

        return getattr(session, name)
    raise AttributeError(f"module 'bnpipe' has no attribute {name!r}")
