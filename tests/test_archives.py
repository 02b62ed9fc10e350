"""Audio read in place from zip parts: real parts built with ``zipfile`` and the ``zip``
program from the synthetic corpus, converted with real Ray and compared byte for byte with
the conversion of the same files unpacked; faulty parts and members."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from llaso_data.convert.pipeline import ConversionError, ConvertOptions, convert
from llaso_data.ingest.archives import ArchiveSet, ArchiveSource, MemberIndex, shared_root
from llaso_data.ingest.paths import AudioPathError
from llaso_data.ingest.zipparts import ArchiveError, MemberError, read_central_directory, read_member
from llaso_synth.corpus import write_corpus

REPO = Path(__file__).resolve().parents[1]
LLASO_SHARD = [sys.executable, "-m", "llaso_data.cli"]
WRAP = "LLaSO-audio/"  # the parts' internal root, absent from the voice paths
ZIP64_FILLERS = 66_000  # members beyond the 65,535 a plain end record can count


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from llaso_data.convert.ray_local import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".json", ".jsonl"))


def _annotations_only(root: Path, target: Path) -> Path:
    """A copy of the corpus's annotation files alone: the audio must come from the parts."""
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            copy = target / path.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    return target


def _zipfile_part(path: Path, members: list[tuple[str, bytes]], method: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as part:
        for name, data in members:
            part.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(corpus root with loose audio, annotation-only copy, parts folder): the audio split
    over a stored part, a deflated part and a zip64 part (>65,535 members), all under WRAP."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=5, samples_per_task=2)
    files = _audio_files(root)
    members = [(WRAP + f.relative_to(root).as_posix(), f.read_bytes()) for f in files]
    parts = tmp_path_factory.mktemp("parts")
    third = len(members) // 3
    _zipfile_part(parts / "LLaSO-audio.part0001.zip", members[:third], zipfile.ZIP_STORED)
    _zipfile_part(parts / "LLaSO-audio.part0002.zip", members[third:2 * third], zipfile.ZIP_DEFLATED)
    fillers = [(f"{WRAP}filler/{i:06d}.txt", b"") for i in range(ZIP64_FILLERS)]
    _zipfile_part(parts / "LLaSO-audio.part0003.zip", members[2 * third:] + fillers, zipfile.ZIP_STORED)
    annotations = _annotations_only(root, tmp_path_factory.mktemp("annotations"))
    return root, annotations, parts


def _shard_bytes(out: Path) -> dict[str, bytes]:
    """Tars and tables by relative path (not the report, state or archive cache)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "report.json" and not p.relative_to(out).parts[0].startswith(".")}


@pytest.mark.parametrize("mode", ["passthrough", "flac16k"])
def test_conversion_from_parts_equals_conversion_from_unpacked_files(corpus, ray_session, tmp_path, mode):
    root, annotations, parts = corpus
    loose = convert(ConvertOptions(root, tmp_path / "loose", audio_mode=mode, samples_per_shard=4))
    zipped = convert(ConvertOptions(annotations, tmp_path / "zipped", audio_mode=mode, samples_per_shard=4,
                                    audio_archives=(str(parts / "*.zip"),)))
    assert loose.identity_holds and zipped.identity_holds
    assert loose.rejected == zipped.rejected == 0 and zipped.written == loose.written > 0
    assert zipped.archives["parts"] == 3 and zipped.archives["parts_read"] == 3
    assert zipped.archives["members"] == len(_audio_files(root)) + ZIP64_FILLERS
    expected, actual = _shard_bytes(tmp_path / "loose"), _shard_bytes(tmp_path / "zipped")
    assert sorted(actual) == sorted(expected) and any(name.endswith(".tar") for name in actual)
    assert actual == expected  # every tar (samples and audio members) and table, byte for byte

    # A re-run into the same OUT reads no central directory again (the tables are cached).
    again = convert(ConvertOptions(annotations, tmp_path / "zipped", audio_mode=mode, samples_per_shard=4,
                                   audio_archives=(str(parts / "*.zip"),)))
    assert again.archives["parts_read"] == 0 and again.archives["parts_cached"] == 3
    assert _shard_bytes(tmp_path / "zipped") == expected


def test_zip64_part_with_more_than_65535_members(corpus):
    _, _, parts = corpus
    part = str(parts / "LLaSO-audio.part0003.zip")
    with open(part, "rb") as file:
        file.seek(-22, os.SEEK_END)
        assert struct.unpack("<H", file.read(22)[10:12])[0] == 0xFFFF  # the plain end record cannot count them
    directory = read_central_directory(part)
    with zipfile.ZipFile(part) as reference:
        infos = [i for i in reference.infolist()]
    assert len(directory.names) == len(infos) > 65_535
    assert directory.names == [i.filename for i in infos]
    assert directory.rows["offset"].tolist() == [i.header_offset for i in infos]
    assert directory.rows["crc"].tolist() == [i.CRC for i in infos]
    with open(part, "rb") as file:
        for position in (0, len(infos) - 1):
            name, row = directory.names[position], directory.rows[position]
            with zipfile.ZipFile(part) as reference:
                assert read_member(file, part, name, row) == reference.read(name)


def _with_zip64_entries(source: Path, target: Path) -> None:
    """Rewrite ``source``'s central directory as a part over 4 GiB has it: every size and
    offset 0xFFFFFFFF in the entry, the values in a zip64 extra field (0x0001)."""
    data = source.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    entries, cd_size, cd_offset = struct.unpack_from("<HLL", data, end + 10)
    entry = struct.Struct("<4s4B4HL2L5H2L")
    position, rewritten = cd_offset, []
    for _ in range(entries):
        fields = list(entry.unpack_from(data, position))
        name_len, extra_len, comment_len = fields[12:15]
        tail = data[position + 46:position + 46 + name_len + extra_len + comment_len]
        usize, csize, offset = fields[11], fields[10], fields[18]
        zip64 = struct.pack("<2H3Q", 1, 24, usize, csize, offset)
        fields[10] = fields[11] = fields[18] = 0xFFFFFFFF
        fields[13] = extra_len + len(zip64)
        rewritten.append(entry.pack(*fields) + tail[:name_len] + zip64 + tail[name_len:])
        position += 46 + name_len + extra_len + comment_len
    directory = b"".join(rewritten)
    record = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, len(directory), cd_offset, 0)
    target.write_bytes(data[:cd_offset] + directory + record)


def test_zip64_entry_fields(faulty, tmp_path):
    """Sizes and offsets carried in zip64 extra fields (parts over 4 GiB) parse and read
    as zipfile reads them."""
    _, parts = faulty
    _with_zip64_entries(parts / "p2.zip", tmp_path / "big.zip")
    directory = read_central_directory(str(tmp_path / "big.zip"))
    with zipfile.ZipFile(tmp_path / "big.zip") as reference, open(tmp_path / "big.zip", "rb") as file:
        infos = reference.infolist()
        assert directory.names == [i.filename for i in infos]
        assert directory.rows["offset"].tolist() == [i.header_offset for i in infos]
        assert directory.rows["compressed"].tolist() == [i.compress_size for i in infos]
        for name, row in zip(directory.names, directory.rows):
            assert read_member(file, "big.zip", name, row) == reference.read(name)


def test_parts_written_by_the_zip_program(corpus, ray_session, tmp_path):
    """Parts made by Info-ZIP ``zip``: one deflated, one stored (``-0``), audio at the root."""
    if shutil.which("zip") is None:
        pytest.skip("the zip program is not installed (apt-get install -y zip); zipfile-built parts are tested")
    root, annotations, _ = corpus
    files = [f.relative_to(root).as_posix() for f in _audio_files(root)]
    parts = tmp_path / "parts"
    parts.mkdir()
    half = len(files) // 2
    for name, level, chunk in (("a.zip", "-6", files[:half]), ("b.zip", "-0", files[half:])):
        subprocess.run(["zip", "-q", "-X", level, str(parts / name), *chunk], cwd=root, check=True)
    methods = {int(m) for name in ("a.zip", "b.zip") for m in read_central_directory(str(parts / name)).rows["method"]}
    assert methods == {0, 8}
    loose = convert(ConvertOptions(root, tmp_path / "loose", samples_per_shard=4))
    zipped = convert(ConvertOptions(annotations, tmp_path / "zipped", samples_per_shard=4,
                                    audio_archives=(str(parts / "a.zip"), str(parts / "b.zip"))))
    assert zipped.rejected == 0 and zipped.written == loose.written
    assert _shard_bytes(tmp_path / "zipped") == _shard_bytes(tmp_path / "loose")


# ----------------------------------------------------------------------------- faults


def _wav(seconds: float = 0.2, hz: float = 440.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 16000, format="WAV",
                    subtype="PCM_16")
    return buffer.getvalue()


def _set_encrypted(path: Path, name: str) -> None:
    """Set the 'encrypted' bit of member ``name`` in its local header and central entry
    (what ``zip -P`` sets; the data is left as it is)."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        position = data.find(signature)
        while position >= 0:
            length = struct.unpack_from("<H", data, position + name_at - (4 if signature == b"PK\x03\x04" else 18))[0]
            if bytes(data[position + name_at:position + name_at + length]) == encoded:
                data[position + flag_at] |= 1
            position = data.find(signature, position + 4)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A corpus whose records point at good members, a missing one, one held by two
    parts, an encrypted one, one whose bytes fail their CRC, and one only present under
    a ``..`` name; plus its parts."""
    root = tmp_path_factory.mktemp("faulty")
    voices = ["clips\\good.wav", "clips\\absent.wav", "clips\\twice.wav", "clips\\locked.wav",
              "clips\\corrupt.wav", "evil.wav", "clips\\good2.wav"]
    records = [{"voice": [v], "conversations": [{"from": "human", "value": "Transcribe.<audio>"},
                                                {"from": "gpt", "value": f"clip {i}"}]}
               for i, v in enumerate(voices)]
    (root / "text_audio").mkdir()
    (root / "text_audio" / "ASR_test.json").write_text(json.dumps(records))
    parts = tmp_path_factory.mktemp("faulty_parts")
    wav = _wav()
    _zipfile_part(parts / "p1.zip", [("clips/good.wav", wav), ("clips/twice.wav", wav), ("clips/locked.wav", wav),
                                     ("clips/corrupt.wav", wav), ("../evil.wav", wav)], zipfile.ZIP_STORED)
    _zipfile_part(parts / "p2.zip", [("clips/twice.wav", wav), ("clips/good2.wav", _wav(0.3))], zipfile.ZIP_DEFLATED)
    _set_encrypted(parts / "p1.zip", "clips/locked.wav")
    data = bytearray((parts / "p1.zip").read_bytes())
    corrupt = read_central_directory(str(parts / "p1.zip"))
    row = corrupt.rows[corrupt.names.index("clips/corrupt.wav")]
    data[int(row["offset"]) + 30 + len("clips/corrupt.wav") + 100] ^= 0xFF  # a byte of its PCM data
    (parts / "p1.zip").write_bytes(bytes(data))
    return root, parts


def test_faulty_members_are_rejected_with_their_reason(faulty, ray_session, tmp_path):
    root, parts = faulty
    report = convert(ConvertOptions(root, tmp_path / "out", audio_archives=(str(parts / "*.zip"),)))
    assert report.identity_holds and report.read == 7 and report.written == 2
    assert report.archives["unsafe"] == 1  # the ../evil.wav entry was never entered in the table
    rejects = {json.loads(r["raw"])["audio"][0]: r for r in pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()}
    assert {path: r["reason"] for path, r in rejects.items()} == {
        "clips/absent.wav": "audio_missing",
        "clips/twice.wav": "audio_ambiguous",
        "clips/locked.wav": "archive_member_unreadable",
        "clips/corrupt.wav": "archive_member_unreadable",
        "evil.wav": "audio_missing",
    }
    assert "p1.zip" in rejects["clips/twice.wav"]["detail"] and "p2.zip" in rejects["clips/twice.wav"]["detail"]
    assert "encrypted" in rejects["clips/locked.wav"]["detail"] and "p1.zip" in rejects["clips/locked.wav"]["detail"]
    assert "CRC-32" in rejects["clips/corrupt.wav"]["detail"]
    assert "'evil.wav'" in rejects["evil.wav"]["detail"]


def test_dotdot_member_is_never_followed(faulty):
    _, parts = faulty
    directory = read_central_directory(str(parts / "p1.zip"))
    assert directory.unsafe == 1 and not any(".." in n.split("/") for n in directory.names)
    source = ArchiveSource(MemberIndex.build(ArchiveSet.from_patterns([str(parts / "p1.zip")])))
    for path in ("evil.wav", "clips/../evil.wav"):
        with pytest.raises(AudioPathError) as error:
            source.member(path)
        assert error.value.reason == "audio_missing"


def test_bad_parts_stop_the_conversion_naming_the_part(faulty, ray_session, tmp_path):
    root, parts = faulty
    good = (parts / "p2.zip").read_bytes()
    (tmp_path / "notzip.zip").write_bytes(b"this is not a zip archive at all\n" * 10)
    (tmp_path / "cut.zip").write_bytes(good[:len(good) // 2])
    for bad, message in (("notzip.zip", "not a zip file"), ("cut.zip", "truncated zip")):
        with pytest.raises(ArchiveError, match=message) as error:
            read_central_directory(str(tmp_path / bad))
        assert bad in str(error.value)
        with pytest.raises(ConversionError, match=message) as error:
            convert(ConvertOptions(root, tmp_path / f"out-{bad}", audio_archives=(str(parts / "p2.zip"),
                                                                                  str(tmp_path / bad))))
        assert bad in str(error.value) and not list((tmp_path / f"out-{bad}").glob("*.parquet"))
    with pytest.raises(ConversionError, match="no archive part matches"):
        convert(ConvertOptions(root, tmp_path / "out-missing", audio_archives=(str(tmp_path / "gone.part*.zip"),)))
    member = read_central_directory(str(parts / "p2.zip"))
    with pytest.raises(MemberError, match="data cut short"), open(tmp_path / "cut.zip", "rb") as file:
        read_member(file, "cut.zip", member.names[-1], member.rows[-1])


def test_the_other_form_points_to_audio_archives(faulty, ray_session, tmp_path):
    """A loose-file audio root that holds zip parts is refused with a pointer to
    --audio-archives; scan checks clips against parts."""
    root, parts = faulty
    with pytest.raises(ConversionError, match="--audio-archives"):
        convert(ConvertOptions(root, tmp_path / "out", audio_root=parts))
    with pytest.raises(ValueError, match="not both"):
        ConvertOptions(root, tmp_path / "out", audio_root=parts, audio_archives=(str(parts / "*.zip"),))
    result = subprocess.run([*LLASO_SHARD, "scan", str(root), "--audio-root", str(parts)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "--audio-archives" in result.stderr and "p1.zip" in result.stderr
    result = subprocess.run([*LLASO_SHARD, "scan", str(root), "--json", "--audio-archives", str(parts / "*.zip")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    rejected = json.loads(result.stdout)["rejected"]
    assert rejected == {"audio_missing": 2, "audio_ambiguous": 1}  # member reads happen at conversion


def test_shared_root_rule(tmp_path):
    assert shared_root(["a/b/x.wav", "a/c/y.wav"]) == "a/"
    assert shared_root(["a/x.wav", "b/y.wav"]) == ""
    assert shared_root(["x.wav"]) == ""
    # Every member under one corpus folder inside a wrapping folder: the voice path (which
    # starts at the corpus folder) resolves through the shortest prefix that names a member.
    wav = _wav()
    _zipfile_part(tmp_path / "p.zip", [("LLaSO-audio/vctk/wav48/p1/a.flac", wav),
                                       ("LLaSO-audio/vctk/wav48/p2/b.flac", wav),
                                       ("LLaSO-audio/vctk/wav48/p2/vctk/wav48/p2/b.flac", b"")], zipfile.ZIP_STORED)
    source = ArchiveSource(MemberIndex.build(ArchiveSet.from_patterns([str(tmp_path / "p.zip")])))
    assert source.index.root == "LLaSO-audio/vctk/wav48/"
    assert source.member("vctk/wav48/p1/a.flac").name == "LLaSO-audio/vctk/wav48/p1/a.flac"
    assert source.member("vctk/wav48/p2/b.flac").name == "LLaSO-audio/vctk/wav48/p2/b.flac"  # shortest first
    assert source.member("LLaSO-audio/vctk/wav48/p1/a.flac").name == "LLaSO-audio/vctk/wav48/p1/a.flac"
    assert source.member("wav48/p1/a.flac").name == "LLaSO-audio/vctk/wav48/p1/a.flac"  # via the whole root
    with pytest.raises(AudioPathError, match="no member named") as error:
        source.member("vctk/wav48/p9/a.flac")
    assert error.value.reason == "audio_missing" and "'LLaSO-audio/vctk/wav48/vctk/wav48/p9/a.flac'" in str(error.value)
