"""Model definitions and their weights: ``jaxvdm.models.wan`` (Wan2.1) and ``jaxvdm.models.shapes``
(the small model shipped with jaxvdm).

This folder installs as ``jaxvdm.models``; it is never importable as a bare ``models`` package.
"""

if __name__ != "jaxvdm.models":
    raise ImportError(
        f"this folder is the package 'jaxvdm.models' and cannot be imported as '{__name__}'; "
        "install jaxvdm (pip install -e .) and import jaxvdm.models instead"
    )
