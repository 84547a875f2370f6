"""Image/audio inputs as an attacker sends them: a file inside the media root that does not decode is
refused naming the value sent, never the server's resolved path."""

import pytest


def test_an_undecodable_audio_file_is_refused_without_the_servers_path(tmp_path):
    """libsndfile's message names the resolved path ("Error opening '/srv/media/x.wav': ..."): a 422
    from `loopml serve --media-root` carried it to the client."""
    import pandas as pd

    from loopml.features.audio import _Bad, load_audio

    media = tmp_path / "media"
    media.mkdir()
    (media / "notaudio.wav").write_text("this is not a wav file")
    with pytest.raises(_Bad) as info:
        load_audio(media / "notaudio.wav", 8000, 800)
    assert "cannot decode audio" in info.value.why and str(tmp_path) not in info.value.why, info.value.why
    assert "notaudio.wav" not in info.value.why  # the caller names the value as it was sent

    from test_audio import fitted, write_tones

    tones = write_tones(tmp_path / "tones", 2)
    train = pd.Series([str(p.relative_to(tones)) for p in sorted(tones.rglob("*.wav"))], name="audio")
    train.attrs["base_dir"] = str(tones)
    feature = fitted(train)
    column = pd.Series(["notaudio.wav"])
    column.attrs["base_dir"] = str(media)
    _, errors = feature._decode(column)
    assert errors and errors[0].startswith("notaudio.wav: cannot decode audio") and str(tmp_path) not in errors[0]
