"""The upload probe's child process (see ``analyses.services.probing``).

Imports neither Django nor the site: a forkserver child runs it with the
detection core only and sends back what it learnt, never pixels.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ensemble.config import MediaLimits


def probe(
    path: str,
    limits: MediaLimits,
    n_frames: int,
    conn: Connection,
    provenance: dict[str, Any] | None = None,
    plan_frames: int = 0,
) -> None:
    """``load_media`` on ``path`` (decoding ``n_frames``, the decoding work
    checked for the analysis's ``plan_frames``); sends ``("ok", MediaInfo)``, ``("invalid",
    reason, code)``, ``("fault", text)`` (the machine failed to read it:
    memory ran out, the disk returned an error) or ``("error", text)``.

    With ``provenance`` (the reader's options: ``trust_anchors``), a file that
    decodes also gets its C2PA Content Credentials read, after the media
    answer went out: ``("provenance", summary dict)``. The parent accepts the
    upload on the media answer alone, so however that read ends (an error, a
    crash, past a cap) it cannot refuse the file.
    """
    from ensemble.errors import InvalidMediaError, MediaReadFaultError
    from ensemble.media import load_media

    try:
        try:
            media = load_media(Path(path), limits, n_frames, plan_frames=plan_frames)
        except InvalidMediaError as e:
            conn.send(("invalid", str(e), e.code))
            return
        except MediaReadFaultError as e:
            conn.send(("fault", str(e)))
            return
        except MemoryError:
            # The probe's own cap is the parent's to enforce ("cap"): this is
            # the machine's memory running out.
            conn.send(("fault", "MemoryError"))
            return
        except Exception as e:  # reported by the parent; the child just ends
            conn.send(("error", f"{type(e).__name__}: {e}"))
            return
        info = media.info
        del media  # the decoded frame is not needed for the manifest
        conn.send(("ok", info))
        if provenance is not None:
            conn.send(("provenance", _provenance(Path(path), info.format, provenance)))
    finally:
        conn.close()


def _provenance(path: Path, media_format: str, options: dict[str, Any]) -> dict[str, Any]:
    from ensemble.provenance import read_provenance, unchecked

    try:
        summary = read_provenance(
            path, media_format, trust_anchors=options.get("trust_anchors") or None
        )
    except Exception as e:  # read_provenance does not raise; a bug must not either
        summary = unchecked(f"Reading the Content Credentials failed ({type(e).__name__}).")
    return summary.to_dict()
