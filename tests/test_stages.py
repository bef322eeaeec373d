"""The stage contract: filters mark rejects, rejected rows pass through, payload is emptied."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.runners.executor import _outcome_counts, to_rejects
from mm1data.schemas import REJECT, TEXT_DOC
from mm1data.stages import Decision, Filter, live_mask, reject_rows


def _docs(texts: list[str]) -> pa.Table:
    rows = [
        {"id": f"d{i}", "text": t, "lineage": {"source": "mem", "offset": i}} for i, t in enumerate(texts)
    ]
    return pa.Table.from_pylist(rows, schema=TEXT_DOC)


class ShortText(Filter):
    name = "short"
    streams = ("text",)
    calls: list[int] = []

    def decide(self, live: pa.Table) -> Decision:
        lengths = [len(t) for t in live.column("text").to_pylist()]
        ShortText.calls.append(live.num_rows)
        keep = np.array([n >= 3 for n in lengths])
        return Decision(keep, [None if k else "too_short" for k in keep], score=[float(n) for n in lengths])


def test_filter_marks_drops_with_stage_reason_and_score():
    out = ShortText()(_docs(["hello", "hi", "world"]))
    rejects = out.column("reject").to_pylist()
    assert rejects[0] is None and rejects[2] is None
    assert rejects[1]["stage"] == "short"
    assert rejects[1]["reason"] == "too_short"
    assert rejects[1]["score"] == 2.0


def test_rejected_rows_are_not_seen_again_and_keep_their_first_reason():
    table = reject_rows(_docs(["a", "hello"]), np.array([True, False]), "ingest", "empty_text")
    ShortText.calls.clear()
    out = ShortText()(table)
    assert ShortText.calls == [1]
    assert out.column("reject").to_pylist()[0]["reason"] == "empty_text"
    assert live_mask(out).tolist() == [False, True]


def test_split_accounts_for_every_row():
    out = ShortText()(_docs(["hello", "hi", "no", "world"]))
    kept, rejects = out.filter(pc.is_null(out["reject"])), to_rejects(out, "text")
    assert kept.num_rows + rejects.num_rows == 4
    assert rejects.schema == REJECT
    assert sorted(rejects.column("id").to_pylist()) == ["d1", "d2"]
    counts = dict(zip(*_outcome_counts(out, "text", "text", True).to_pydict().values(), strict=True))
    assert counts.pop("text|bytes") == kept.nbytes  # bytes of the kept rows: payload partitions
    assert counts == {"text|rows": 4, "text|kept": 2, "text|text/short/too_short": 2}
