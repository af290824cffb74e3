"""A synthetic feature store whose downstream saturation is known by construction.

The generator plants eq. (1)'s irreducible error e_IR in each downstream (DS) task, so that
``synth -> probe -> study`` can be checked against the truth.

Construction
------------
Checkpoint quality is one number, the class separation ``s`` of its representation. A checkpoint's
upstream (US) accuracy is the exact accuracy of the nearest-class-mean rule on a C_US-class problem whose
class means are ``s`` times orthonormal vectors under unit isotropic Gaussian noise. With the true class's
score ``s + z_c`` and the others' ``z_j`` (all z standard normal),

    acc_US(s) = P(s + z_c > max_j z_j) = integral phi(z) Phi(z + s)^(C_US - 1) dz,

which we evaluate by quadrature; e_US falls like a Gaussian tail, exp(-s^2/2) up to polynomial factors.

Each DS task t has C_t classes with orthonormal directions m_c (shared by all checkpoints: the task is
the same). In layer l of checkpoint i, an example's feature is

    x = s_i * u_i * beta_t * g_t(l) * m_{c'} + z,    z ~ N(0, I),

then rotated by a random orthogonal matrix of that (checkpoint, layer). ``beta_t`` is how well the task
transfers from US, ``g_t(l)`` how much of it layer l carries (the last layer need not be the best, as for
the paper's fast-saturating tasks in Figure 6), and ``u_i`` in [u_min, 1] a per-checkpoint transfer
efficiency that scatters checkpoints below the frontier, so that the upper hull matters.

``c'`` is the example's label, except for a fixed set of test examples: for a fraction ``e_ir_t`` of each
task's test split (the same examples for every checkpoint), ``c'`` is a different class drawn at random.
Those examples carry the features of a wrong class (twice as far along its direction as clean examples,
so that a probe's own mistakes do not land them on their true label by chance), so any classifier that
reads the features gets them wrong, and the better the features the surer it is: as s -> infinity (e_US -> 0) the clean examples are
all classified correctly and the unrecoverable ones all wrongly, so

    e_DS -> e_ir_t   exactly   (saturation 1 - e_ir_t, within the rounding of e_ir_t * n_test).

Below the plateau, the clean error of a Gaussian-tail classifier at separation beta*s behaves like
e_US^(beta^2), so e_DS ~ k * e_US^alpha + e_IR with alpha near beta_t^2: eq. (1) with a planted e_IR.
Train splits are clean (the few-shot probe learns true class means); only test examples are unrecoverable.

The planted values are written to ``STORE/synth.json`` and to each checkpoint's metadata
(``upstream_accuracy``, ``separation``, ``transfer_efficiency``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .store import FeatureStore, atomic_write_json

SYNTH_FILE = "synth.json"
#: Unrecoverable test examples sit this many times deeper inside their wrong class than clean examples sit
#: inside theirs. A probe that errs on such an example could land on its true label by chance and push
#: accuracy above the ceiling at middling quality; deep inside the wrong class it (almost) never errs.
UNRECOVERABLE_GAIN = 2.0


@dataclass
class SynthTask:
    """A downstream task: name, classes, planted irreducible error, transfer and per-layer gain."""

    name: str
    e_ir: float
    transfer: float = 1.0
    num_classes: int = 5
    layer_gain: tuple = ()        # one factor per layer; () = rising to 1 at the last layer

    @property
    def saturation(self) -> float:
        return 1.0 - self.e_ir


def rising_gain(n_layers: int) -> tuple:
    """Layer gains rising to 1 at the last layer (the usual case: the last layer is the best)."""
    return (1.0,) if n_layers == 1 else tuple(float(x) for x in np.linspace(0.45, 1.0, n_layers))


def default_tasks(n_layers: int) -> list[SynthTask]:
    rising = rising_gain(n_layers)
    # Fast-saturating task: best at the second-to-last layer, as in the paper's Figure 6.
    early = (1.0,) if n_layers == 1 else \
        tuple(float(x) for x in np.linspace(0.55, 1.0, n_layers - 1)) + (0.85,)
    return [
        SynthTask("near_task", e_ir=0.08, transfer=2.0, layer_gain=rising),
        SynthTask("mid_task", e_ir=0.20, transfer=1.6, layer_gain=rising),
        SynthTask("far_task", e_ir=0.35, transfer=1.8, layer_gain=early),
    ]


#: a synthetic store larger than this is refused before anything is written
MAX_STORE_BYTES = 8 << 30


@dataclass
class SynthConfig:
    n_checkpoints: int = 24
    n_layers: int = 3
    dim: int = 16
    us_classes: int = 10
    e_us_range: tuple = (0.01, 0.6)     # upstream error of the best and worst checkpoint (log-uniform)
    u_min: float = 0.8                  # lowest per-checkpoint transfer efficiency
    n_train_per_class: int = 30
    n_test_per_class: int = 200
    seed: int = 0
    tasks: list = field(default_factory=list)
    dtype: str = "float32"

    def validate_sizes(self, n_tasks: int = 3, num_classes: int = 5) -> None:
        """The counts and sizes, checked before anything is built (the tasks may not exist yet); the store's
        size is estimated and refused beyond MAX_STORE_BYTES."""
        for name, value, low in (("n_checkpoints", self.n_checkpoints, 3), ("n_layers", self.n_layers, 1),
                                 ("dim", self.dim, 1), ("n_train_per_class", self.n_train_per_class, 1),
                                 ("n_test_per_class", self.n_test_per_class, 1), ("num_classes", num_classes, 2)):
            if int(value) < low:
                why = " (a fit needs 3 models)" if name == "n_checkpoints" else ""
                raise InputError(f"synth: {{param}} must be >= {low}{why}, got {value}", param=name)
        rows = num_classes * (self.n_train_per_class + self.n_test_per_class)
        size = self.n_checkpoints * self.n_layers * n_tasks * rows * self.dim * np.dtype(self.dtype).itemsize
        if size > MAX_STORE_BYTES:
            raise InputError(f"synth: {self.n_checkpoints} checkpoints x {self.n_layers} layers x {n_tasks} tasks x "
                             f"{rows} rows x {self.dim} dims would write {size / 2**30:,.1f} GiB of features, more than "
                             f"the {MAX_STORE_BYTES / 2**30:.0f} GiB a synthetic store may take; make {{param}} (or "
                             "the layers, dims, examples) smaller", param="n_checkpoints")

    def validate(self) -> None:
        self.validate_sizes(len(self.tasks) or 3, min((t.num_classes for t in self.tasks), default=5))
        lo, hi = self.e_us_range
        if not 0 < lo < hi < 1 - 1 / self.us_classes:
            raise InputError(f"synth: e_us_range must satisfy 0 < lo < hi < {1 - 1 / self.us_classes:.2f} "
                             f"(chance error of {self.us_classes} classes), got {self.e_us_range}")
        if not 0 < self.u_min <= 1:
            raise InputError(f"synth: u_min must lie in (0, 1], got {self.u_min}")
        for t in self.tasks:
            if not 0 <= t.e_ir < 1 - 1 / t.num_classes:   # NaN fails this too
                raise InputError(f"synth: task {t.name!r}: {{param}} must lie in [0, {1 - 1 / t.num_classes:.2f}) (the "
                                 f"chance error of {t.num_classes} classes), got {t.e_ir}", param="e_ir")
            if self.dim < t.num_classes:
                raise InputError(f"synth: dim {self.dim} is smaller than task {t.name!r}'s {t.num_classes} classes")
            if t.layer_gain and len(t.layer_gain) != self.n_layers:
                raise InputError(f"synth: task {t.name!r} has {len(t.layer_gain)} layer gains for {self.n_layers} layers")


# --------------------------------------------------------------------------- upstream accuracy

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(120)   # nodes/weights for integral f(z) e^{-z^2/2} dz


def _phi_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, dtype=float) / math.sqrt(2.0)))


def nearest_mean_accuracy(s: float, num_classes: int) -> float:
    """Exact accuracy of the nearest-class-mean rule, means s * orthonormal, unit Gaussian noise."""
    vals = _phi_cdf(_GH_X + s) ** (num_classes - 1)
    return float(np.sum(_GH_W * vals) / math.sqrt(2.0 * math.pi))


def separation_for_error(e_us: float, num_classes: int) -> float:
    """Invert :func:`nearest_mean_accuracy` by bisection: the separation with upstream error e_us."""
    lo, hi = 0.0, 20.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if 1.0 - nearest_mean_accuracy(mid, num_classes) > e_us:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- generator

def _orthonormal(rng, dim: int, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q[:, :n].T.copy()          # (n, dim), orthonormal rows


def make_synth_store(path, config: SynthConfig | None = None, **overrides) -> FeatureStore:
    """Write a synthetic feature store at ``path`` (must be new or empty) and return it."""
    cfg = config or SynthConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise InputError(f"synth: unknown option {k!r}")
        setattr(cfg, k, v)
    if not cfg.tasks:
        cfg.tasks = default_tasks(cfg.n_layers)
    cfg.tasks = [t if isinstance(t, SynthTask) else SynthTask(**t) for t in cfg.tasks]
    for t in cfg.tasks:
        if not t.layer_gain:
            t.layer_gain = rising_gain(cfg.n_layers)
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    store = FeatureStore.create(path)
    dtype = np.dtype(cfg.dtype)

    # Datasets: labels, class directions and the fixed unrecoverable test examples.
    task_state = {}
    for t in cfg.tasks:
        c = t.num_classes
        y_train = np.repeat(np.arange(c), cfg.n_train_per_class)
        y_test = np.repeat(np.arange(c), cfg.n_test_per_class)
        rng.shuffle(y_train)
        rng.shuffle(y_test)
        n_bad = int(round(t.e_ir * y_test.size))
        bad = rng.choice(y_test.size, size=n_bad, replace=False)
        feat_class_test = y_test.copy()
        shift = rng.integers(1, c, size=n_bad)            # a different class, uniformly among the others
        feat_class_test[bad] = (y_test[bad] + shift) % c
        store.add_dataset(t.name, y_train, y_test, num_classes=c,
                          class_names=[f"{t.name}_class{j}" for j in range(c)])
        test_gain = np.ones(y_test.size)
        test_gain[bad] = UNRECOVERABLE_GAIN
        task_state[t.name] = dict(y_train=y_train, feat_test=feat_class_test, n_bad=n_bad, test_gain=test_gain,
                                  means=_orthonormal(rng, cfg.dim, c))

    # Checkpoints: upstream error log-uniform over the range, sorted so names follow quality.
    lo, hi = cfg.e_us_range
    e_us = np.sort(np.exp(rng.uniform(math.log(lo), math.log(hi), cfg.n_checkpoints)))[::-1]
    width = len(str(cfg.n_checkpoints - 1))
    ckpts = []
    for i, e in enumerate(e_us):
        name = f"synth-{i:0{width}d}"
        s = separation_for_error(float(e), cfg.us_classes)
        u = float(rng.uniform(cfg.u_min, 1.0))
        acc = nearest_mean_accuracy(s, cfg.us_classes)
        store.set_checkpoint_meta(name, upstream_accuracy=acc, separation=s, transfer_efficiency=u,
                                  generator="plateaulab.synth")
        ckpts.append({"checkpoint": name, "upstream_accuracy": acc, "separation": s, "transfer_efficiency": u})
        for t in cfg.tasks:
            st = task_state[t.name]
            for li in range(cfg.n_layers):
                scale = s * u * t.transfer * t.layer_gain[li]
                rot = _orthonormal(rng, cfg.dim, cfg.dim)
                train = scale * st["means"][st["y_train"]] + rng.standard_normal((st["y_train"].size, cfg.dim))
                test = (scale * st["test_gain"][:, None] * st["means"][st["feat_test"]]
                        + rng.standard_normal((st["feat_test"].size, cfg.dim)))
                layer = "final" if li == cfg.n_layers - 1 else f"block{li + 1}"
                store.add_features(name, t.name, layer, train=(train @ rot).astype(dtype),
                                   test=(test @ rot).astype(dtype), layer_index=li)

    planted = {
        "generator": "plateaulab.synth",
        "description": "e_DS -> e_ir as e_US -> 0: a fraction e_ir of each task's test examples carries a wrong "
                       "class's features (see plateaulab/synth.py)",
        "config": {k: v for k, v in asdict(cfg).items() if k != "tasks"},
        "us_metadata": "upstream_accuracy",
        "tasks": {t.name: {"e_ir": task_state[t.name]["n_bad"] / (cfg.n_test_per_class * t.num_classes),
                           "saturation": 1.0 - task_state[t.name]["n_bad"] / (cfg.n_test_per_class * t.num_classes),
                           "e_ir_requested": t.e_ir, "transfer": t.transfer, "num_classes": t.num_classes,
                           "layer_gain": list(t.layer_gain), "unrecoverable_test_examples": task_state[t.name]["n_bad"],
                           "best_layer": int(np.argmax(t.layer_gain))}
                  for t in cfg.tasks},
        "checkpoints": ckpts,
    }
    atomic_write_json(Path(path) / SYNTH_FILE, planted)
    return store


def read_planted(store_path) -> dict:
    """The planted values of a synthetic store (``STORE/synth.json``)."""
    f = Path(store_path) / SYNTH_FILE
    if not f.exists():
        raise InputError(f"{store_path} has no {SYNTH_FILE}: it was not written by `plateaulab synth`")
    return json.loads(f.read_text())
