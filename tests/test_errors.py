"""natproof.errors: an error keeps every wording and attribute through reworded() and pickling (a worker's, or
tblib's, which dask.distributed installs for a fleet)."""

from __future__ import annotations

import pickle

import pytest

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
