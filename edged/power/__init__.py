"""Power awareness: sensors → policy → governor.

The server samples a :class:`~edged.power.sensors.Source` every
``power.interval_s``, feeds the :class:`~edged.power.sensors.Reading` to a
:class:`~edged.power.policy.Policy`, and on ``Decision.changed`` hands the new
:class:`~edged.power.config.Profile` to the :class:`~edged.power.governor.Governor`
(and to the runtime for ``num_threads``/``variant``).  Wiring, for the lead::

    cfg = PowerConfig.from_dict(config.power)            # raises PowerConfigError
    source = make_source(cfg.source, cfg.sysfs_root, cfg.file, clock, cfg.thermal_zones)
    policy = Policy(cfg, clock)
    governor = Governor(cfg.profile(policy.profile), clock, workers=..., queue_size=...,
                        shed_retry_ms=int(cfg.interval_s * 1000))
    # each power tick:
    decision = policy.decide(source.read())
    if decision.changed:
        governor.apply_profile(cfg.profile(decision.profile))
        scheduler.set_max_active(governor.concurrency_bound)
    # each predict: governor.admit(priority, now, queue_depth) → THROTTLED if not ok
    # each worker:  clock.sleep(governor.wait_before_invoke(i)); ...; governor.record_invoke(i, t0, dt)

Nothing here imports ZeroMQ or ``edged.server``; every module takes an
``edged.seams.Clock`` so tests run on a ``FakeClock`` and never sleep.  Each
module's docstring is its manual.
"""

from __future__ import annotations

from edged.power.config import (
    DEFAULT_PROFILES,
    DEFAULT_RULES,
    PROFILE_ORDER,
    Condition,
    ConditionError,
    PowerConfig,
    PowerConfigError,
    Profile,
    Rule,
    parse_condition,
)
from edged.power.governor import Admission, Governor, expired
from edged.power.policy import Decision, Policy, PolicyError
from edged.power.sensors import (
    FileSource,
    PsutilSource,
    Reading,
    SensorConfigError,
    Source,
    SysfsSource,
    make_source,
)

__all__ = [
    "Admission", "Condition", "ConditionError", "DEFAULT_PROFILES", "DEFAULT_RULES", "Decision", "FileSource",
    "Governor", "PROFILE_ORDER", "Policy", "PolicyError", "PowerConfig", "PowerConfigError", "Profile",
    "PsutilSource", "Reading", "Rule", "SensorConfigError", "Source", "SysfsSource", "expired", "make_source",
    "parse_condition",
]
