"""Download: fetch images that sources give only as URLs, politely and resumably, on Ray.

- :mod:`~mm1data.download.client`: the network part (aiohttp; limits, retries, opt-outs).
- :mod:`~mm1data.download.fetch`: the per-batch fetch stage and its checkpoint parts.
- :mod:`~mm1data.download.phase`: :func:`~mm1data.download.phase.download_phase` over Ray datasets.
- :mod:`~mm1data.download.job`: ``mm1data download`` (URL tables in, img2dataset-layout shards out).
"""
