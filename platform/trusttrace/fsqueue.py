"""The embedded broker: kombu's filesystem transport, with messages that
appear in the queue folder only once they are whole.

kombu's writer creates the message file under its final name and then writes
it, holding an ``flock`` that its reader never takes: a worker polling in
that moment claims the file and reads it empty or cut short (the message is
lost, and the worker's consumer fails on it). Here each message is written
under a name the reader skips (a leading dot, a ``.part`` suffix) in the
same folder and then renamed into place, which is atomic on one filesystem.
Settings select this transport for ``filesystem://`` (``CELERY_BROKER_TRANSPORT``).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's filesystem channel (the parent) has this signature; its stubs'
    # AbstractChannel has no **kwargs, which the virtual channel passes on.
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        """Put ``payload`` onto ``queue``: written aside, then renamed in."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = Path(self.data_folder_out)
        partial = folder / f".{name}.part"
        try:
            partial.write_bytes(str_to_bytes(dumps(payload)))
            partial.replace(folder / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise ChannelError(f"Cannot add a message to {str(folder)!r}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
