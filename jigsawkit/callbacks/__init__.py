"""Callbacks: hooks the pretraining engine, the evaluators and the run call at fixed points.

See :mod:`jigsawkit.callbacks.base` for the interface (``Callback``, ``EpochEnd``) and
``CallbackList``, which fans a call out to several callbacks in order.
"""

from jigsawkit.callbacks.base import Callback, CallbackList, EpochEnd, callback_name

__all__ = ["Callback", "CallbackList", "EpochEnd", "callback_name"]
