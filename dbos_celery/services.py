"""The narrow pieces that the modules of the package receive.

``Durable`` (the façade) builds one :class:`Services` and passes it down;
a module takes what it uses from it: the store, the notifier, the codec,
the settings, the publish function, this process's runtime, and whether the
worker wants its slots back. No module
but the façade and the CLI knows ``Durable``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .aftercommit import AfterCommit
from .config import Settings
from .recovery.heartbeat import ProcessRuntime
from .recovery.liveness import Liveness
from .serialization import Serializer
from .slots import SlotDemand
from .store.engine import Database
from .wakeup import Notifier

# (workflow id, workflow name, its queue or None): send its Celery message
Publish = Callable[[str, str, str | None], None]


class Services:
    """What the workflows of one Durable run on."""

    __slots__ = (
        "store", "notifier", "codec", "settings", "publish", "registered", "slots", "liveness",
        "_runtime", "_after_commit",
    )  # fmt: skip

    def __init__(
        self,
        store: Database,
        notifier: Notifier,
        codec: Serializer,
        settings: Settings,
        publish: Publish,
        registered: Callable[[], list[str]],
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.codec = codec
        self.settings = settings
        self.publish = publish
        self.registered = registered  # the workflow names this process has
        # whether this worker wants its slots back (set up by the worker's hooks)
        self.slots = SlotDemand()
        # the worker's beater (set up by the worker's hooks; none elsewhere)
        self.liveness = Liveness(store, settings)
        self._runtime: ProcessRuntime | None = None
        self._after_commit: AfterCommit | None = None

    def runtime(self) -> ProcessRuntime:
        """This process's runtime (made anew in a forked child)."""
        rt = self._runtime
        if rt is None or rt.pid != os.getpid():
            rt = self._runtime = ProcessRuntime(
                self.store, self.settings, self.publish, self.notifier.waiters.wake,
                self.registered, self.liveness.board,
            )  # fmt: skip
        return rt

    def after_commit(self) -> AfterCommit:
        """What this process does once callers' transactions commit (made
        anew in a forked child)."""
        ac = self._after_commit
        if ac is None or ac.pid != os.getpid():
            ac = self._after_commit = AfterCommit(self.store)
        return ac

    def current_runtime(self) -> ProcessRuntime | None:
        """This process's runtime if it made one (None: it runs nothing)."""
        rt = self._runtime
        return rt if rt is not None and rt.pid == os.getpid() else None

    def stop_runtime(self) -> None:
        """Stop this process's runtime and after-commit thread, if it made them."""
        rt, self._runtime = self._runtime, None
        if rt is not None and rt.pid == os.getpid():
            rt.stop()
        ac, self._after_commit = self._after_commit, None
        if ac is not None and ac.pid == os.getpid():
            ac.stop()
