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


def test_extension_glob_is_case_insensitive():
    glob = listing.extension_glob(("jpg", "png"))
    assert glob == "*.{[jJ][pP][gG],[pP][nN][gG]}"


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


def test_listing_settings_apply_to_the_listing_only_and_leave_the_users_alone(spark, sample_tree, monkeypatch):
    root, _ = sample_tree
    open_cost, discovery = "spark.sql.files.openCostInBytes", "spark.sql.sources.parallelPartitionDiscovery.threshold"
    seen, original = {}, listing._list

    def spy(session, where):
        seen.update({key: session.conf.get(key) for key in (open_cost, discovery)})
        return original(session, where)

    monkeypatch.setattr(listing, "_list", spy)
    spark.conf.set(discovery, "7")  # as if given with --conf
    try:
        listed = listing.list_images(spark, str(root))
    finally:
        assert spark.conf.get(discovery) == "7" and spark.conf.get(open_cost, None) is None
        spark.conf.unset(discovery)
    assert seen == {open_cost: "1", discovery: "7"}
    again = listing.list_images(spark, str(root))
    assert seen == {open_cost: "1", discovery: str(2**31 - 1)}  # local folder: listed by the driver
    assert spark.conf.get(discovery, None) is None and spark.conf.get(open_cost, None) is None
    pd.testing.assert_frame_equal(listed, again)


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
