"""Optional dependencies: the package needs only torch; the figures, the live explorers, Hugging
Face's Longformer and the Triton kernel each need one more package, imported only where used.

:func:`require` runs before such an import, so a missing package is reported as what to install
(the extra of ``pyproject.toml`` that brings it, or the package itself), not as a bare
``No module named ...``.
"""

from __future__ import annotations

import importlib.util


def require(*modules: str, by: str, extra: str | None = None) -> None:
    """Raise ModuleNotFoundError naming what to install if one of ``modules`` is not installed.

    by: what needs them, as the message names it (a module's ``__name__``, a function).
    extra: the extra of swa-tutorial that installs them (``pip install 'swa-tutorial[extra]'``);
    without one the message says ``pip install`` followed by the missing packages.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return
    install = f"pip install 'swa-tutorial[{extra}]'" if extra else "pip install " + " ".join(missing)
    raise ModuleNotFoundError(
        f"{by} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: {install}",
        name=missing[0],
    )
