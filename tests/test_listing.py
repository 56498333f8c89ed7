"""Listing with Spark's binaryFile source and the pure selection logic."""

from __future__ import annotations

import pandas as pd
import pytest

from orchard.config import RunConfig
from orchard.errors import ConfigError, OrchardError
from orchard.io import listing


def manifest_of(rels: list[str]) -> pd.DataFrame:
    root = "file:/data"
    return listing.build_manifest([f"{root}/{r}" for r in rels], [1] * len(rels), [0] * len(rels), root)


def config(**kwargs) -> RunConfig:
    return RunConfig(input="/data", output="/out", **kwargs)


def test_label_and_split_from_the_layout():
    assert listing.label_and_split("Training/Apple Braeburn/1_100.jpg") == ("Apple Braeburn", "Training")
    assert listing.label_and_split("Apple/1.jpg") == ("Apple", "")
    assert listing.label_and_split("1.jpg") == ("", "")
    assert listing.label_and_split("Test/a/b/c.png") == ("b", "Test")


def test_classes_and_splits_select():
    manifest = manifest_of(["Training/Apple A/1.jpg", "Training/Apple B/1.jpg", "Training/Banana/1.jpg",
                            "Test/Apple A/2.jpg", "Test/Banana/2.jpg"])
    chosen = listing.select(manifest, config(classes=("Apple*",), splits=("Training",)))
    assert chosen["rel"].tolist() == ["Training/Apple A/1.jpg", "Training/Apple B/1.jpg"]


def test_empty_selection_is_a_clear_error():
    manifest = manifest_of(["Training/Apple/1.jpg", "Test/Apple/2.jpg"])
    with pytest.raises(ConfigError, match="classes found: Apple"):
        listing.select(manifest, config(classes=("Kiwi",)))
    with pytest.raises(ConfigError, match="splits found: Test, Training"):
        listing.select(manifest, config(splits=("Validation",)))
    with pytest.raises(ConfigError, match="no images"):
        listing.select(manifest_of([]), config())


def test_limit_is_stratified_and_deterministic():
    rels = [f"Training/A/{i}.jpg" for i in range(60)] + [f"Training/B/{i}.jpg" for i in range(30)] + \
           [f"Training/C/{i}.jpg" for i in range(10)]
    manifest = manifest_of(rels)
    first = listing.select(manifest, config(limit=20))
    again = listing.select(manifest.sample(frac=1.0, random_state=4), config(limit=20))
    assert first["path"].tolist() == again["path"].tolist()
    assert first.groupby("label").size().to_dict() == {"A": 12, "B": 6, "C": 2}
    assert len(listing.select(manifest, config(limit=7))) == 7
    assert len(listing.select(manifest, config(limit=1000))) == 100


def test_spark_listing_finds_images_with_odd_names(spark, sample_tree):
    root, planted = sample_tree
    manifest = listing.list_images(spark, str(root))
    rels = set(manifest["rel"])
    assert set(planted) <= rels
    assert "Training/README.txt" not in rels
    assert len(manifest) == 4 * 16 + len(planted)
    assert manifest["path"].str.startswith("file:/").all()
    assert set(manifest["split"]) == {"Training", "Test"}
    row = manifest[manifest["rel"] == "Training/Odd Fruit é/page.JPG"].iloc[0]
    assert row["label"] == "Odd Fruit é" and row["size"] > 0


def test_missing_input_is_a_one_line_error(spark, tmp_path):
    with pytest.raises(OrchardError, match="does not exist"):
        listing.list_images(spark, str(tmp_path / "nowhere"))


def test_the_listing_is_the_drivers_own_walk(spark, sample_tree):
    """Spark only qualifies the root: the same manifest comes from the walk with no session at all."""
    root, _ = sample_tree
    listed = listing.list_images(spark, str(root))
    walked = listing.account_for_every_file(f"file:{root}")
    pd.testing.assert_frame_equal(listed, walked)
    assert listed.attrs == walked.attrs and len(listed) > 64


def test_links_cycles_empty_files_and_extensions_in_any_case(tmp_path):
    """Directory links are followed once, cycles are cut and counted, broken links and loops are list errors,
    zero-byte files are rows, extensions match in any case, times are Hadoop's (milliseconds)."""
    import os

    root = tmp_path / "tree"
    apple, elsewhere = root / "Training" / "Apple", tmp_path / "elsewhere" / "Kiwi"
    apple.mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    (apple / "1.jpg").write_bytes(b"jpeg bytes")
    (apple / "2.PNG").write_bytes(b"png bytes")
    (apple / "empty.jpeg").write_bytes(b"")
    (elsewhere / "3.jpg").write_bytes(b"jpeg bytes")
    os.symlink(elsewhere, root / "Training" / "Kiwi")  # a linked folder: its images are listed through the link
    os.symlink("..", apple / "back-to-training")  # a cycle
    os.symlink("/nonexistent/x.jpg", apple / "dangling.jpg")
    os.symlink("loop.jpg", apple / "loop.jpg")
    os.utime(apple / "1.jpg", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))

    manifest = listing.account_for_every_file(f"file:{root}")
    rows = manifest.set_index("rel")
    assert sorted(rows.index) == ["Training/Apple/1.jpg", "Training/Apple/2.PNG", "Training/Apple/dangling.jpg",
                                  "Training/Apple/empty.jpeg", "Training/Apple/loop.jpg", "Training/Kiwi/3.jpg"]
    assert rows.loc["Training/Kiwi/3.jpg", "label"] == "Kiwi" and rows.loc["Training/Apple/empty.jpeg", "size"] == 0
    assert rows.loc["Training/Apple/1.jpg", "modified_us"] == 1_700_000_000_123_000
    assert rows.loc["Training/Apple/loop.jpg", "list_error"] == "symbolic link loop"
    assert rows.loc["Training/Apple/dangling.jpg", "list_error"].startswith("broken symbolic link")
    assert rows["list_error"].notna().sum() == 2
    assert manifest.attrs["cycle_paths"] == 5  # the files the cycle would list again, once (links not followed)
    assert manifest.attrs["skipped"] == {}


def test_a_missing_input_is_a_one_line_error_without_spark(tmp_path):
    with pytest.raises(OrchardError, match="does not exist"):
        listing.account_for_every_file(f"file:{tmp_path / 'nowhere'}")


def test_every_file_is_listed_or_skipped_with_its_reason(spark, tmp_path):
    """Hadoop hides '_' and '.' names and orchard reads only image extensions: nothing vanishes silently."""
    from conftest import jpeg_bytes, textured

    root = tmp_path / "photos"
    apple = root / "Training" / "Apple"
    for folder in (apple, root / "Training" / "_Pear", root / ".thumbnails", root / "old-run" / "report",
                   root / "old-run" / "features"):
        folder.mkdir(parents=True)
    image = jpeg_bytes(textured(32, 32))
    for path in (apple / "1.jpg", apple / "_DSC0001.jpg", root / "Training" / "_Pear" / "2.jpg",
                 root / ".thumbnails" / "3.jpg", apple / "._1.jpg", root / "old-run" / "report" / "thumb.jpg"):
        path.write_bytes(image)
    (apple / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (apple / "clip.MOV").write_bytes(b"\0\0\0\x18ftypqt  ")
    (apple / "README").write_text("no extension")
    (root / "old-run" / "run.json").write_text("{}")
    (root / "old-run" / "_SUCCESS").write_text("")
    (root / "old-run" / "features" / "part-0.parquet").write_bytes(b"PAR1")
    (root / "new-out").mkdir()
    (root / "new-out" / "x.png").write_bytes(b"in the run's own output")

    manifest = listing.list_images(spark, str(root), exclude=(str(root / "new-out"),))
    assert sorted(manifest["rel"]) == ["Training/Apple/1.jpg", "Training/Apple/_DSC0001.jpg", "Training/_Pear/2.jpg"]
    assert (manifest["size"] == len(image)).all() and manifest["modified_us"].notna().all()
    assert "list_error" not in manifest or manifest["list_error"].isna().all()
    skipped = {path.split(str(root) + "/", 1)[1]: reason for path, reason in manifest.attrs["skipped"].items()}
    hidden = "hidden (a name starting with '.')"
    assert skipped == {
        ".thumbnails/3.jpg": hidden, "Training/Apple/._1.jpg": hidden, "Training/Apple/.DS_Store": hidden,
        "Training/Apple/clip.MOV": "not an image format orchard reads (.mov)",
        "Training/Apple/README": "no file extension",
        "new-out/x.png": f"inside the orchard output file:{root}/new-out",
        **{f"old-run/{name}": f"inside the orchard output file:{root}/old-run"
           for name in ("run.json", "_SUCCESS", "features/part-0.parquet", "report/thumb.jpg")},
    }
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) == len(manifest) + len(skipped)  # every regular file accounted for
    assert listing.skipped_summary(manifest.attrs["skipped"])[hidden] == 3


def test_a_folder_with_no_image_names_what_was_skipped(tmp_path):
    manifest = manifest_of([])
    manifest.attrs["skipped"] = {"file:/data/a.txt": "not an image format orchard reads (.txt)"}
    with pytest.raises(ConfigError, match=r"skipped 1 files: not an image format orchard reads \(\.txt\): 1\)"):
        listing.select(manifest, config())
