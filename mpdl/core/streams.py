"""The streams room: objects that ignore Range, each served by one stream for all its ranges.

A server that answers a range request with the whole object (200, no Content-Range) cannot
serve ranges: every request would bring the object from byte 0. This room keeps, driven by
the scheduler's events:
- the ranges of each such object waiting for its stream (``defer``): the first range deferred
  takes along the object's other ranges waiting to start or backing off, so they do not go
  out one after another only to be deferred in turn;
- when the stream starts (``start``): once no request of the object is out (one running may
  still finish its range), one task streams the object from its first deferred byte to its
  last, and the ranges it serves are cancelled.
Which objects ignore Range is the planner's (``Planner.streamed``), kept here and replaced when
one is found (``ignores_range``), so that a range planned again (a file starting over) is
planned as part of a stream. A compressed part inside a larger object needs Range: the
scheduler gives it up rather than defer it. No I/O.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from .board import TaskBoard
from .plan import Planner, stream_task
from .states import TaskRun, TaskState

log = logging.getLogger("mpdl")

T = TaskState


class Streams:
    def __init__(self, board: TaskBoard, planner: Planner) -> None:
        self.board = board
        self.planner = planner  # how files are cut into tasks, and which objects ignore Range
        self.deferred: dict[str, list[TaskRun]] = {}  # object -> ranges its stream will serve

    def ignores_range(self, source: str) -> None:
        """``source`` answered a range request with the whole object."""
        self.planner = replace(self.planner, streamed=self.planner.streamed | {source})

    def waits(self, run: TaskRun) -> bool:
        """Whether the queued ``run`` is a range its object's stream will serve instead."""
        task = run.task
        return task.ranged and task.offset > 0 and task.source in self.planner.streamed

    def defer(self, run: TaskRun) -> None:
        """Keep ``run``'s range for its object's stream; the first one deferred takes the
        object's other waiting ranges along."""
        source = run.task.source
        first = not self.deferred.get(source)
        self._defer(run)
        if first:
            for other in self.board.runs.values():
                if (other.state in (T.QUEUED, T.DELAYED) and other.task.source == source
                        and other.task.compression is None):
                    self._defer(other)

    def _defer(self, run: TaskRun) -> None:
        self.board.move(run, T.DEFERRED)
        self.deferred.setdefault(run.task.source, []).append(run)

    def start(self) -> bool:
        """Queue a stream, first, for each object with ranges deferred and no request out.
        Returns whether one was queued."""
        started = False
        for source in [s for s in self.deferred if not self.board.on_source[s]]:
            runs = [run for run in self.deferred.pop(source) if run.state is T.DEFERRED]
            if not runs:  # cancelled since (their files started over or failed)
                continue
            task = stream_task(self.board.next_task_id, source, [run.task for run in runs])
            log.info("%s ignores Range: one stream of %d bytes serves %d ranges", source,
                     task.length, len(runs))
            self.board.add_tasks([task], front=True)
            for run in runs:
                self.board.move(run, T.CANCELLED)
            started = True
        return started
