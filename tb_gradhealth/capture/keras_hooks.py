"""The callbacks' hooks into a Keras model's training, installed for one `fit` and never left behind by one that raised."""

from __future__ import annotations

import functools
import threading
import weakref

from tb_gradhealth.capture.step_loss import FROM_COMPUTE_LOSS, FROM_SCALE_LOSS, StepLoss

# Attribute of a model holding its ModelHooks: kept on the model, not in a
# registry, since the hooks' traced functions refer to the model (a weak
# registry would keep every model alive through its value).
_HOOKS = "_gradient_health_hooks"
_registry_lock = threading.Lock()
# Attribute of our method wrappers: the instance-level method each replaced (or None).
_WRAPS = "_gradient_health_wraps"


def _wrap_method(owner, name: str, make_wrapper) -> None:
    """Sets the instance attribute `owner.name` to `make_wrapper(the method as it is without our wrappers)`."""
    previous = vars(owner).get(name)
    while previous is not None and hasattr(previous, _WRAPS):
        previous = getattr(previous, _WRAPS)
    original = previous if previous is not None else getattr(type(owner), name).__get__(owner)
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, _WRAPS, previous)
    # object.__setattr__: Keras models and optimizers track what is assigned
    # to them; a function needs no tracking.
    object.__setattr__(owner, name, wrapper)


def _unwrap_method(owner, name: str) -> None:
    wrapper = vars(owner).get(name)
    if wrapper is None or not hasattr(wrapper, _WRAPS):
        return
    previous = getattr(wrapper, _WRAPS)
    if previous is not None:
        object.__setattr__(owner, name, previous)
    else:
        object.__delattr__(owner, name)


class ModelHooks:
    """What the capture changes in one model while a `fit` with our callbacks runs, and how it undoes it.

    During such a `fit` the model's train function is a guard that runs a
    train function traced with the optimizer's `apply` wrapped (each of the
    fit's callbacks records the step there) and with `Optimizer.scale_loss`
    and `Model.compute_loss` wrapped (they tell the step's loss). Keras
    calls no callback hook when `fit` raises, so the hooks may be left
    installed: the guard then finds that no callback of ours prepared its
    call, puts everything back, tells the callbacks their fit was abandoned
    (they write what they hold) and runs Keras's own train function. The
    next `fit` with a callback of ours does the same first. The wrappers
    record nothing outside the guard's calls.

    One instance per model (`ModelHooks.of`). The callbacks of one `fit` are
    those given the model (`set_model`, which Keras calls for every callback
    of a `fit` before any `on_train_begin`) since the previous `fit` began:
    all of them record.
    """

    def __init__(self, model):
        self._model = weakref.ref(model)
        self.step_loss = StepLoss()
        self._joining: list = []  # weak references to callbacks given the model since the last fit began
        self._members: list = []  # weak references to the callbacks of the current fit
        self._started: list = []  # the callbacks of the current fit whose on_train_begin ran, in that order
        self._optimizer = None
        self._keras_train_function = None
        self._functions: dict = {}
        self._functions_for = None
        self._mode = None
        self._authorized = False
        self._in_call = False
        self._calls = 0
        self.installed = False
        # One bound method, so the model's train function can be recognised.
        self._guard = self._guard_function

    @classmethod
    def of(cls, model) -> ModelHooks:
        with _registry_lock:
            hooks = vars(model).get(_HOOKS)
            if hooks is None:
                hooks = cls(model)
                object.__setattr__(model, _HOOKS, hooks)
            return hooks

    @property
    def callbacks(self) -> tuple:
        """The callbacks recording the current fit."""
        return tuple(self._started)

    def join(self, callback) -> None:
        """A callback was given the model: it belongs to the next fit."""
        self._joining = [ref for ref in self._joining if ref() is not None and ref() is not callback]
        self._joining.append(weakref.ref(callback))

    def begin(self, callback) -> None:
        """`callback.on_train_begin`: installs the hooks for a new fit, or adds the callback to the current one.

        Raises:
          ValueError: another callback of the fit writes into the same run directory.
        """
        # Given the model again (set_model) since the current fit began: a new fit.
        rejoined = any(ref() is callback for ref in self._joining)
        same_fit = (
            self.installed
            and not rejoined
            and (
                any(ref() is callback for ref in self._members)
                # A CallbackList reused across fits calls no set_model: still
                # this fit while no step ran.
                or self._calls == 0
            )
        )
        if not same_fit:
            self.restore(abandoned=True)
            self._members = [ref for ref in self._joining if ref() is not None] or [weakref.ref(callback)]
            self._joining = []
            self._install()
        for other in self._started:
            if other.run_dir_key == callback.run_dir_key:
                self.restore(abandoned=False)
                raise ValueError(
                    "two GradientHealthCallbacks of one fit write into %r; give each its own log_dir" % callback.run_dir
                )
        if callback not in self._started:
            self._started.append(callback)

    def authorize(self, mode: bool | None = None) -> None:
        """`on_train_batch_begin`: the guard's next call runs the recording train function of `mode`.

        Args:
          mode: True or False to run the function traced for logged or
            unlogged steps only (one callback, update_freq > 1, one step per
            execution); None for the one that decides in the graph.
        """
        self._authorized = True
        self._mode = mode if len(self._started) == 1 else None

    def end(self, callback) -> None:
        """`callback.on_train_end`: the last callback of the fit to end puts everything back."""
        if callback in self._started:
            self._started.remove(callback)
        if not self._started:
            self.restore(abandoned=False)

    def restore(self, abandoned: bool) -> None:
        """Puts back Keras's own train function, `apply`, `scale_loss` and `compute_loss`.

        Args:
          abandoned: the fit ended without on_train_end (it raised): its
            callbacks are told so.
        """
        if not self.installed:
            return
        model = self._model()
        if model is not None:
            if getattr(model, "train_function", None) is self._guard:
                model.train_function = self._keras_train_function
            _unwrap_method(model, "compute_loss")
        if self._optimizer is not None:
            _unwrap_method(self._optimizer, "apply")
            _unwrap_method(self._optimizer, "scale_loss")
        callbacks, self._started = self._started, []
        self._members = []
        self._optimizer = None
        self._keras_train_function = None
        self.installed = False
        self._authorized = False
        if abandoned:
            for callback in callbacks:
                callback.fit_abandoned()

    def _install(self) -> None:
        model = self._model()
        optimizer = model.optimizer
        step_loss = self.step_loss

        def apply_wrapper(original):
            def apply(grads, trainable_variables=None):
                if not self._in_call:
                    return original(grads, trainable_variables)
                loss = step_loss.take()
                apply_fn = original
                for callback in self._started:
                    apply_fn = functools.partial(callback.record_step, optimizer, apply_fn, loss=loss, mode=self._mode)
                return apply_fn(grads, trainable_variables)

            return apply

        def scale_loss_wrapper(original):
            def scale_loss(loss):
                if self._in_call:
                    step_loss.note(loss, FROM_SCALE_LOSS)
                return original(loss)

            return scale_loss

        def compute_loss_wrapper(original):
            def compute_loss(*args, **kwargs):
                loss = original(*args, **kwargs)
                if self._in_call:
                    step_loss.note(loss, FROM_COMPUTE_LOSS)
                return loss

            return compute_loss

        _wrap_method(optimizer, "apply", apply_wrapper)
        _wrap_method(optimizer, "scale_loss", scale_loss_wrapper)
        _wrap_method(model, "compute_loss", compute_loss_wrapper)
        self._optimizer = optimizer
        # Keras made its train function (without tracing it) just before
        # on_train_begin; ours are made from the same train step.
        self._keras_train_function = model.train_function
        model.train_function = self._guard
        self._calls = 0
        self.installed = True

    def _guard_function(self, iterator):
        model = self._model()
        if not self._authorized:
            # No callback of ours prepared this call: a fit that raised left
            # the hooks installed, and this is a later fit without them.
            self.restore(abandoned=True)
            return model.train_function(iterator)
        self._authorized = False
        self._calls += 1
        function = self._recording_function(model, self._mode)
        self._in_call = True
        try:
            return function(iterator)
        finally:
            self._in_call = False

    def recording_function(self, mode: bool | None):
        """The train function that records with the fit's callbacks in `mode`, to call directly (benchmarks).

        The host side of the callbacks (writing the buffer) does not run.
        """
        function = self._recording_function(self._model(), mode)

        def call(iterator):
            self._mode, self._in_call = mode, True
            try:
                return function(iterator)
            finally:
                self._in_call = False

        return call

    def _recording_function(self, model, mode):
        # The objects themselves, not their ids: an id may be reused by a
        # new object once the old one is gone.
        key = (self._keras_train_function, self._optimizer, tuple(self._started))
        if self._functions_for != key:
            # A new compile, optimizer or set of callbacks: trace anew.
            self._functions, self._functions_for = {}, key
        function = self._functions.get(mode)
        if function is None:
            model.make_train_function(force=True)
            function = self._functions[mode] = model.train_function
            model.train_function = self._guard
        return function
