"""The upload probe's child process (see ``analyses.services.probing``).

Imports neither Django nor the site: a forkserver child runs it with the
detection core only and sends back what it learnt, never pixels.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


def probe(path: str, limits: Any, n_frames: int, conn: Connection) -> None:
    """``load_media`` on ``path``; sends ``("ok", MediaInfo)``, ``("invalid",
    reason, code)`` or ``("error", text)``."""
    from ensemble.errors import InvalidMediaError
    from ensemble.media import load_media

    try:
        media = load_media(Path(path), limits, n_frames)
    except InvalidMediaError as e:
        conn.send(("invalid", str(e), e.code))
    except MemoryError:
        conn.send(("error", "MemoryError"))
    except Exception as e:  # reported by the parent; the child just ends
        conn.send(("error", f"{type(e).__name__}: {e}"))
    else:
        conn.send(("ok", media.info))
    finally:
        conn.close()
