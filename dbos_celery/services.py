"""The narrow pieces that the modules of the package receive.

``Durable`` (the façade) builds one :class:`Services` and passes it down;
a module takes what it uses from it: the store, the notifier, the codec,
the settings, the publish function, this process's runtime, and whether the
worker wants its slots back. No module
but the façade and the CLI knows ``Durable``.

The store, the notifier and the settings may be replaced
(:meth:`Services.rebind`, for ``Durable.using``): the modules read them
from here when they use them, and what keeps them (a runtime, a sweeper)
is made per process on first use, after the previous one was closed.
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

    def close(self) -> None:
        """Stop this process's runtime, after-commit thread and wakeup
        subscriber, and close the pool the store created (all made again
        on next use). A worker's beater and slot counter are left alone
        (see :meth:`reset_worker`)."""
        self.stop_runtime()
        self.notifier.stop()
        self.store.dispose()

    def reset_worker(self) -> None:
        """Stop the beater of a worker that ran in this process and give the
        next worker a new one and a new slot counter (after the worker has
        stopped, its runtime too)."""
        self.liveness.stop()
        self.liveness = Liveness(self.store, self.settings)
        self.slots = SlotDemand()

    def rebind(self, store: Database, settings: Settings, notifier: Notifier) -> None:
        """Run on ``store``, ``settings`` and ``notifier`` from now on, with
        a fresh worker state; after :meth:`close` (what this process made
        on the previous ones must be stopped first)."""
        self.store, self.settings, self.notifier = store, settings, notifier
        self.reset_worker()

    def stop_runtime(self) -> None:
        """Stop this process's runtime and after-commit thread, if it made them."""
        rt, self._runtime = self._runtime, None
        if rt is not None and rt.pid == os.getpid():
            rt.stop()
        ac, self._after_commit = self._after_commit, None
        if ac is not None and ac.pid == os.getpid():
            ac.stop()
