"""The one trainer for every task: DDP, autocast, accumulation, checkpoints, resume, signals, logs.

Quick use (a task implements :class:`Task`; its config subclasses :class:`TrainerConfig`)::

    from speechdistill.train import Trainer, TrainerConfig
    result = Trainer(config, task, "exp/run1").run()   # resumes from exp/run1/checkpoints if any
    sys.exit(result.exit_code)                           # REQUEUE_EXIT_CODE after SIGTERM/SIGUSR1

Entry points use :func:`speechdistill.train.cli.train_main`.
"""
# Exit code of a run stopped by SIGTERM/SIGUSR1 after writing a checkpoint (99); the launcher owns it
# and requeues jobs that exit with it.
from ..launch import REQUEUE_EXIT_CODE
from .config import TrainerConfig
from .optim import decay_param_groups, lr_multiplier
from .task import StepOutput, Task, TrainContext
from .trainer import Trainer, TrainingError, TrainResult

__all__ = ["REQUEUE_EXIT_CODE", "StepOutput", "Task", "TrainContext", "Trainer", "TrainerConfig", "TrainingError",
           "TrainResult", "decay_param_groups", "lr_multiplier"]
