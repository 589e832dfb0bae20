"""The callbacks a sweep hands to each trial's ``run_experiment(callbacks=[...])``.

:class:`SweepMetricReporter` reads the sweep metric from every epoch the run's stages end
(pretraining, and evaluators that train per epoch such as the linear probe), reports it to
the strategy through the trial's context, and, when the strategy says the trial should
stop (hyperband, pruning), asks the run to end at that epoch
(``event.request_stop(reason, end_run=True)``): the run skips its later stages, records
``run.state: stopped`` and returns normally. :class:`WandbRunForwarder` sends every row a
trial logs to the W&B agent's run of an online sweep.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from jigsawkit.callbacks import Callback, EpochEnd

if TYPE_CHECKING:
    from jigsawkit.search.sweep_runner import TrialContext


def metric_names(metric: str) -> tuple[str, ...]:
    """The names a sweep metric has in logged rows: summary keys are dotted
    (``probe.linear_probe.val_loss``), per-epoch metrics use slashes
    (``probe/linear_probe/val_loss``)."""
    return tuple(dict.fromkeys([metric, metric.replace(".", "/")]))


class SweepMetricReporter(Callback):
    """Reports the sweep metric of each epoch to the strategy; ends the run when told to."""

    name = "the sweep"

    def __init__(self, ctx: TrialContext, metric: str):
        self.ctx = ctx
        self.names = metric_names(metric)

    def on_epoch_end(self, event: EpochEnd) -> None:
        for name in self.names:
            value = event.metrics.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                reason = self.ctx.record(event.step, float(value))
                if reason is not None:
                    event.request_stop(reason, end_run=True)
                return


class WandbRunForwarder(Callback):
    """Online sweeps: every row a trial logs, and its final summary, go to the W&B agent's
    run (``wandb.run``), which stands for the trial on W&B's server. A failure to forward
    is reported once and forwarding stops; the trial goes on (its run directory keeps
    every metric)."""

    name = "wandb forwarding"

    def __init__(self) -> None:
        self.failed = False

    def _run(self) -> Any:
        import wandb

        return None if self.failed else wandb.run

    def _guard(self, what: str, send: Any) -> None:
        try:
            send()
        except Exception as error:  # noqa: BLE001 - a W&B hiccup must not end the trial
            from jigsawkit.errors import one_line

            self.failed = True
            print(
                f"warning: forwarding {what} to the W&B agent's run failed ({one_line(error)}); "
                "this trial's run directory keeps them",
                file=sys.stderr,
                flush=True,
            )

    def on_log(self, metrics: dict[str, Any], step: int | None) -> None:
        run = self._run()
        if run is not None:
            self._guard("metrics", lambda: run.log(dict(metrics)))

    def summary(self, values: dict[str, Any]) -> None:
        """The trial's final summary (called by the sweep once the run returned)."""
        run = self._run()
        if run is not None:
            self._guard("the summary", lambda: run.summary.update(dict(values)))
