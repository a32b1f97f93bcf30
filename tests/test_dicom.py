"""read_dicom: pydicom's own test files, DICOMs written here with every bit depth, rescale, photometric
interpretation and VOI LUT (windows checked against pydicom's apply_voi_lut), and the files it must refuse."""
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEGLSLossless

from data import DataError, read_dicom
from helpers import write_dicom


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the odd files it bundles on purpose
def test_read_dicom_on_every_pydicom_test_file():
    """Each bundled file either decodes to a valid image or raises DataError naming it; nothing else escapes."""
    decoded, refused, messages = [], [], {}
    for name in get_testdata_files():
        try:
            image = read_dicom(name)
        except DataError as error:
            assert Path(name).name in str(error) and "\n" not in str(error)  # printed as one line, reason and all
            refused.append(name)
            messages[Path(name).name] = str(error)
            continue
        assert image.dtype == np.float32 and image.ndim == 2 and image.size > 0
        assert 0.0 <= image.min() and image.max() <= 1.0 and np.isfinite(image).all()
        decoded.append(name)
    assert len(decoded) >= 30 and len(refused) >= 30  # MR/CT/16x16 series decode; RGB, SR, multi-frame... refuse
    names = {Path(n).name for n in decoded}
    assert {"CT_small.dcm", "MR_small.dcm"} <= names and "SC_rgb.dcm" not in names
    assert "not an image (no PhotometricInterpretation: a RT Plan Storage object?)" in messages["rtplan.dcm"]
    assert "colour image (PhotometricInterpretation YBR_FULL)" in messages["SC_rgb_jpeg_dcmtk.dcm"]


def test_read_dicom_scales_bit_depths_and_signs(tmp_path):
    u8 = read_dicom(write_dicom(tmp_path / "u8.dcm", np.array([[0, 51, 255]], np.uint8)))
    np.testing.assert_allclose(u8, [[0, 0.2, 1]], atol=1e-6)
    u12 = read_dicom(write_dicom(tmp_path / "u12.dcm", np.array([[0, 4095]], np.uint16), bits_stored=12))
    np.testing.assert_allclose(u12, [[0, 1]], atol=1e-6)  # 12 stored bits: 4095 is white, not 1/16 grey
    s16 = read_dicom(write_dicom(tmp_path / "s16.dcm", np.array([[-32768, 0, 32767]], np.int16)))
    np.testing.assert_allclose(s16, [[0, 32768 / 65535, 1]], atol=1e-6)


def test_read_dicom_rescale_and_monochrome1(tmp_path):
    pixels = np.array([[0, 1000, 4095]], np.uint16)
    # CT-like rescale: value = 2 * stored - 100; the [0, 1] range is that of the stored range after rescaling.
    rescaled = read_dicom(write_dicom(tmp_path / "r.dcm", pixels, bits_stored=12, slope=2, intercept=-100))
    np.testing.assert_allclose(rescaled, [[0, 2000 / 8190, 1]], atol=1e-6)
    # A negative slope flips the order of the range; still within [0, 1] and monotone decreasing.
    flipped = read_dicom(write_dicom(tmp_path / "f.dcm", pixels, bits_stored=12, slope=-1, intercept=0))
    np.testing.assert_allclose(flipped, [[1, 1 - 1000 / 4095, 0]], atol=1e-6)
    inverted = read_dicom(write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted, [[1, 1 - 1000 / 4095, 0]], atol=1e-6)


@pytest.mark.filterwarnings("error")  # a narrow sigmoid overflows exp far from its centre: no warning either
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center, width", [([3000, 5000], [2500, 100]), (2000.5, 1)])
def test_read_dicom_applies_the_files_window_as_a_viewer_does(tmp_path, function, center, width):
    """A mammogram "for presentation" carries the window its viewer applies after the rescale; pydicom's own
    apply_voi_lut is the oracle (its output spans the rescaled stored range, ours [0, 1]). The first of several
    windows is taken; width 1 is a threshold; MONOCHROME1 is inverted after the window."""
    pixels = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    pixels[0, :4] = [1049, 1050, 1051, 1052]  # 1998-2004 rescaled; 2000, the threshold of width 1, maps to 0
    window = dict(WindowCenter=center, WindowWidth=width, VOILUTFunction=function)
    path = write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, slope=2, intercept=-100, **window)
    ds = pydicom.dcmread(path)
    low, high = -100, 4095 * 2 - 100  # pydicom's output range: the stored range, rescaled
    with np.errstate(over="ignore"):  # pydicom's sigmoid overflows too
        expected = (apply_voi_lut(apply_modality_lut(pixels, ds), ds) - low) / (high - low)
    image = read_dicom(path)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image.dtype == np.float32 and (function == "SIGMOID" or 0 < (image == 1).sum() < image.size)  # clipped
    inverted = read_dicom(write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, slope=2, intercept=-100,
                                      photometric="MONOCHROME1", **window))
    np.testing.assert_allclose(inverted, 1 - expected, atol=1e-6)


def test_read_dicom_applies_a_voi_lut_table_and_reads_padding_as_black(tmp_path):
    """A VOI LUT Sequence (a table; here 12-bit entries declared as 16 bits, as some files do) maps each rescaled
    value; below its first entry the first, above its last the last. Its first value, -900, is written unsigned
    (64636), as implicit VR leaves it. PixelPaddingValue to PixelPaddingRangeLimit, in stored values (outside the
    detector), is black whatever the table or MONOCHROME1 would make it."""
    table = np.round(np.linspace(0, 1, 1024) ** 0.5 * 4095).astype(np.uint16)  # a gamma
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [1024, 2**16 - 900, 16], table.tobytes()  # OW, as scanners write it
    pixels = np.array([[0, 50, 100, 500, 1000, 3000, 4095]], np.uint16)  # -1024 ... 3071 rescaled
    path = write_dicom(tmp_path / "lut.dcm", pixels, bits_stored=12, slope=1, intercept=-1024,
                       photometric="MONOCHROME1", VOILUTSequence=[item], PixelPaddingValue=0,
                       PixelPaddingRangeLimit=50)
    expected = 1 - table[np.clip(pixels.astype(int) - 1024 + 900, 0, 1023)] / 4095
    expected[0, :2] = 0  # the padding, else white: below the table's first value, inverted
    np.testing.assert_allclose(read_dicom(path), expected, atol=1e-6)
    assert expected[0, 2] == 1 and 0 < expected[0, 3] < 1 and expected[0, 5] == 0  # below, within, above


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom, writing the NaN this test needs
def test_read_dicom_reads_a_voi_it_cannot_use_by_the_stored_range_and_says_so(tmp_path, capsys):
    """An empty window (as anonymisers leave it), a NaN width, a LINEAR width under 1: one note each, the image read
    by its stored range, not dropped. A table without its descriptor gives way to the window, as in pydicom;
    padding is black on that path too."""
    pixels = np.array([[0, 1000, 2000, 4095]], np.uint16)
    for name, tags in (("empty", dict(WindowCenter="", WindowWidth="")),
                       ("nan width", dict(WindowCenter="2000", WindowWidth="NaN")),
                       ("nan centre", dict(WindowCenter="NaN", WindowWidth="1000")),
                       ("narrow", dict(WindowCenter=2000, WindowWidth=0.5)),
                       ("padded", dict(PixelPaddingValue=0, photometric="MONOCHROME1"))):
        image = read_dicom(write_dicom(tmp_path / f"{name}.dcm", pixels, bits_stored=12, **tags))
        stored = 1 - pixels / 4095 if name == "padded" else pixels / 4095
        stored[0, 0] = 0 if name == "padded" else stored[0, 0]  # else white: 0 in MONOCHROME1
        np.testing.assert_allclose(image, stored, atol=1e-6)
        assert capsys.readouterr().err.count("read by the stored range") == (name != "padded")
    broken = Dataset()
    broken.LUTDescriptor, broken.LUTData = [2, 0, 9], b"\x00\x00\x01\x00"  # 9-bit entries: not allowed
    window = dict(WindowCenter=2000, WindowWidth=1000)
    windowed = read_dicom(write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, **window))
    assert 0 < windowed[0, 2] < 1 and windowed[0, 1] == 0 and windowed[0, 3] == 1
    both = read_dicom(write_dicom(tmp_path / "both.dcm", pixels, bits_stored=12, VOILUTSequence=[broken], **window))
    np.testing.assert_array_equal(both, windowed)
    assert "its VOI LUT table" in capsys.readouterr().err


def _compressed_without_decoder(path: Path) -> Path:
    write_dicom(path, np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless  # no JPEG-LS decoder is installed here
    ds.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("case", ["truncated", "text", "rgb", "frames", "no_pixels", "compressed", "folder", "absent"])
def test_read_dicom_refuses_with_data_error(tmp_path, case):
    path = tmp_path / f"{case}.dcm"
    if case == "truncated":
        full = write_dicom(tmp_path / "full.dcm", np.ones((64, 64), np.uint16)).read_bytes()
        path.write_bytes(full[: len(full) - 3000])
    elif case == "text":
        path.write_text("patient_id,left or right breast\nP_00001,LEFT\n")
    elif case == "rgb":
        write_dicom(path, np.zeros((8, 8, 3), np.uint8))
    elif case == "frames":
        write_dicom(path, np.zeros((3, 8, 8), np.uint16), frames=True)
    elif case == "no_pixels":
        write_dicom(path, np.zeros((8, 8), np.uint16))
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path, enforce_file_format=True)
    elif case == "compressed":
        _compressed_without_decoder(path)
    elif case == "folder":
        path.mkdir()
    with pytest.raises(DataError, match=path.name) as error:
        read_dicom(path)
    expected = {"rgb": "colour", "frames": "3 frames", "no_pixels": "no pixel data", "compressed": "decoder",
                "text": "not a DICOM", "truncated": "pixel data"}.get(case, "")
    assert expected in str(error.value)
