"""``mm1data plan``: know before you spend. Runs the build's phases on a seeded record sample and
projects the full build: kept records, dedup loss, packed result, a budget's needs, CPU-hours.

:mod:`~mm1data.plan.job` runs it, :mod:`~mm1data.plan.measure` measures the sample,
:mod:`~mm1data.plan.project` holds the estimators, :mod:`~mm1data.plan.summary` prints.
"""
