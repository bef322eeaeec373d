"""Deduplication across all streams: exact and near-duplicate texts and images, and optional
decontamination, as one phase of co-partitioned steps on Ray Data (see :mod:`mm1data.dedup.phases`).

Rows already rejected pass through; removed records get a ``reject`` (stage ``dedup``, reason
``exact_duplicate``, ``near_duplicate`` or ``decontaminated``, ``duplicate_of`` the survivor, score
the similarity), removed images inside interleaved docs go to ``item_rejects``. The survivors do
not depend on the number of blocks or workers.
"""
