"""natproof.errors: an error keeps every wording and attribute through reworded() and pickling (a worker's, or
tblib's, which dask.distributed installs for a fleet)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pcapbytes import tcp_pair, write_pair

from natproof.errors import CaptureError, InputError, setting


def _errors() -> list[CaptureError | InputError]:
    return [CaptureError("a.pcap", "not a capture"),
            InputError("a.pcap and b.pcap do not overlap; ", setting("clock_offset_s", verb="pass"), " if they differ")]


@pytest.mark.parametrize("tblib", [False, True])
def test_a_reworded_error_is_a_new_one_that_pickles_whole(tblib: bool) -> None:
    # Found merging two helpers' work: after a fleet test had loaded dask.distributed (tblib's pickling of every
    # exception), reworded() changed the original error's wordings too; a reworded CaptureError lost its prefix
    # when pickled (its __reduce__ rebuilt it from path and problem).
    if tblib:
        pytest.importorskip("tblib.pickling_support").install()
    for error in _errors():
        before = (str(error), error.for_command_line(), error.for_manifest(), dict(vars(error)))
        hop = error.reworded("hop 0: ")
        assert (str(error), error.for_command_line(), error.for_manifest(), dict(vars(error))) == before
        back = pickle.loads(pickle.dumps(hop))
        assert type(back) is type(error)
        assert str(back) == f"hop 0: {before[0]}"
        assert back.for_command_line() == f"hop 0: {before[1]}" and back.for_manifest() == f"hop 0: {before[2]}"
    capture = pickle.loads(pickle.dumps(_errors()[0].reworded("hop 0: ")))
    assert (capture.path, capture.problem) == ("a.pcap", "not a capture")


def test_captures_apart_is_an_input_error_whose_fact_comes_without_its_advice(tmp_path: Path) -> None:
    # grade and a chain's hop give their own advice for captures that do not overlap: they read ``apart``, not the
    # message's text (grade used to cut correlate's hint out of it by its words).
    import natproof

    inside, _ = tcp_pair(1_700_000_000 * 10**9)
    _, outside = tcp_pair(1_700_003_600 * 10**9, isn=42)  # an hour later
    a, b = write_pair(tmp_path, inside, outside)
    with pytest.raises(natproof.CapturesApart) as exc:
        natproof.correlate(a, b)
    error = exc.value
    assert isinstance(error, natproof.InputError)
    assert error.apart == (f"{a} and {b} do not overlap in time (22:13:20.000-22:13:20.007 vs "
                           "23:13:20.000-23:13:20.007 UTC, on the "
                           "outside clock)")
    assert str(error) == f"{error.apart}; pass clock_offset_s if the clocks differ"
    assert error.for_command_line() == f"{error.apart}; pass --clock-offset if the clocks differ"
    back = pickle.loads(pickle.dumps(error.reworded("hop 0: ")))
    assert isinstance(back, natproof.CapturesApart) and back.apart == error.apart
