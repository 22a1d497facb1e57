"""Reading the SMS Spam Collection, or a table, by content; downloading it; load_data."""

import hashlib
import io
import zipfile

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptclassifier.data.practice_set import practice_file
from gptclassifier.data.sms import (
    SMS_MEMBER,
    class_names,
    download_sms_spam,
    load_data,
    read_labeled_table,
    read_sms_spam,
)
from gptclassifier.errors import ConfigError, DataError, DownloadError, FallbackWarning

SMALL_SMS = 'ham\tSee you at 7\nspam\tWIN a prize!\tReply now\nham\t"Lunch?" she asked\nham\tok\n'
PLAIN_SMS = "ham\tSee you at 7\nspam\tWIN a prize! Reply now\nham\tok\n"  # same in both parsings


def write(tmp_path, content, name="SMSSpamCollection"):
    """Write `content` (str or bytes) to a file in tmp_path and return its path."""
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def zip_bytes(member: str, data: bytes) -> bytes:
    """Return a zip archive holding one member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return buffer.getvalue()


def test_exact_parsing_keeps_every_line_and_tabs_inside_messages(tmp_path):
    frame = read_sms_spam(write(tmp_path, SMALL_SMS))
    assert list(frame.columns) == ["Label", "Text"]
    assert frame["Label"].tolist() == ["ham", "spam", "ham", "ham"]
    assert frame["Text"].tolist() == [
        "See you at 7",
        "WIN a prize!\tReply now",
        '"Lunch?" she asked',
        "ok",
    ]


MESSAGE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=40
)


@given(st.lists(st.tuples(st.sampled_from(["ham", "spam"]), MESSAGE_TEXT), min_size=1, max_size=20))
def test_exact_parsing_round_trips_any_messages(tmp_path_factory, messages):
    path = tmp_path_factory.mktemp("sms") / "SMSSpamCollection"
    path.write_text("".join(f"{label}\t{text}\n" for label, text in messages), encoding="utf-8")
    frame = read_sms_spam(path)
    assert list(zip(frame["Label"], frame["Text"], strict=True)) == messages


@given(
    messages=st.lists(
        st.tuples(st.sampled_from(["ham", "spam"]), MESSAGE_TEXT), min_size=1, max_size=20
    ),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_a_byte_order_mark_and_crlf_never_change_the_messages(
    tmp_path_factory, messages, bom, crlf
):
    lines = "".join(f"{label}\t{text}{chr(13) * crlf}\n" for label, text in messages)
    path = tmp_path_factory.mktemp("sms") / "SMSSpamCollection"
    path.write_bytes(b"\xef\xbb\xbf" * bom + lines.encode())
    frame = read_sms_spam(path)
    assert list(zip(frame["Label"], frame["Text"], strict=True)) == messages


def test_exact_parsing_keeps_unicode_line_separators_inside_messages(tmp_path):
    text = "one\u2028two\x85three\x0bfour"
    assert read_sms_spam(write(tmp_path, f"ham\t{text}\n"))["Text"].tolist() == [text]


def test_exact_parsing_strips_a_byte_order_mark_and_crlf(tmp_path):
    content = b"\xef\xbb\xbf" + SMALL_SMS.replace("\n", "\r\n").encode()
    assert read_sms_spam(write(tmp_path, content)).equals(
        read_sms_spam(write(tmp_path, SMALL_SMS, "b"))
    )


def test_exact_parsing_reads_the_data_member_of_a_zip(tmp_path):
    archive = write(tmp_path, zip_bytes(SMS_MEMBER, SMALL_SMS.encode()), "sms.zip")
    assert read_sms_spam(archive).equals(read_sms_spam(write(tmp_path, SMALL_SMS)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ham\tfine\nspam no tab here\n", "line 2 has no tab"),
        ("ham\tfine\n\nham\tagain\n", "line 2 is blank"),
        ("ham\tfine\nHAM\tshouting\n", "line 2 has label 'HAM'"),
        (b"ham\tfine\nham\tcaf\xe9\n", "line 2 is not valid UTF-8 \\(byte 0xe9\\)"),
        ("", "holds no messages"),
    ],
)
@pytest.mark.parametrize("parsing", ["exact", "book"])
def test_bad_sms_files_name_the_file_and_line(tmp_path, content, message, parsing):
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=message) as caught:
        read_sms_spam(path, parsing=parsing)
    assert str(path) in str(caught.value)


def test_book_parsing_is_the_chapters_pandas_call(tmp_path):
    content = (
        "ham\tSee you at 7\n"
        'ham\t"Unclosed quote starts here\n'
        "spam\tswallowed\n"
        'ham\tstill "inside\n'
        "ham\tlast\n"
    )
    path = write(tmp_path, content)
    book = read_sms_spam(path, parsing="book")
    reference = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"])
    pd.testing.assert_frame_equal(book, reference)
    assert len(read_sms_spam(path, parsing="exact")) == 5
    assert len(book) == 3
    assert book["Text"].iloc[1].count("\n") == 2


def test_book_parsing_reports_what_pandas_cannot_read(tmp_path):
    with pytest.raises(DataError, match="pandas cannot parse it .*Expected 2 fields in line 2"):
        read_sms_spam(write(tmp_path, SMALL_SMS), parsing="book")


def test_unknown_parsing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown parsing 'fast'"):
        read_sms_spam(write(tmp_path, SMALL_SMS), parsing="fast")


def test_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_sms_spam(tmp_path / "nope")


def test_user_tables_with_any_column_names_and_classes(tmp_path):
    table = 'message,category,extra\nhello,greeting,1\nbuy now,ad,2\n"a, b",question,3\n'
    frame = read_labeled_table(write(tmp_path, table, "mine.csv"), "message", "category")
    assert frame.to_dict("list") == {
        "Label": ["greeting", "ad", "question"],
        "Text": ["hello", "buy now", "a, b"],
    }
    assert class_names(frame) == ("ad", "greeting", "question")
    tsv = read_labeled_table(write(tmp_path, "Label\tText\n1\tone\n0\tnone\n", "mine.tsv"))
    assert tsv["Label"].tolist() == ["1", "0"]


def test_user_tables_without_the_named_columns_are_refused(tmp_path):
    path = write(tmp_path, "text,label\nhi,a\n", "mine.csv")
    with pytest.raises(DataError, match="no column named 'Text' \\(columns: text, label\\)"):
        read_labeled_table(path)


def test_class_names_sort_integers_numerically():
    assert class_names(pd.DataFrame({"Label": ["10", "2", "1"]})) == ("1", "2", "10")
    assert class_names(pd.DataFrame({"Label": [1, 0, 1]})) == ("0", "1")


def test_download_sms_spam_extracts_verifies_and_caches(file_server, tmp_path):
    data = SMALL_SMS.encode()
    archive = zip_bytes(SMS_MEMBER, data)
    file_server.serve("/sms.zip", archive)
    hashes = {
        "archive_sha256": hashlib.sha256(archive).hexdigest(),
        "file_sha256": hashlib.sha256(data).hexdigest(),
    }
    urls = (file_server.url("/missing.zip"), file_server.url("/sms.zip"))
    path = download_sms_spam(urls=urls, progress=False, **hashes)
    assert path.read_bytes() == data
    assert path.parent.parent == tmp_path / "cache"
    assert sorted(p.name for p in path.parent.iterdir()) == [SMS_MEMBER]
    download_sms_spam(urls=urls, progress=False, **hashes)
    assert file_server.requests["/sms.zip"] == 1  # the second call used the cache

    path.write_bytes(b"ham\tcorrupted\n")
    assert download_sms_spam(urls=urls, progress=False, **hashes).read_bytes() == data
    assert file_server.requests["/sms.zip"] == 2  # a cached file with the wrong hash is replaced


def test_download_sms_spam_refuses_an_archive_whose_member_differs(file_server):
    archive = zip_bytes(SMS_MEMBER, SMALL_SMS.encode())
    file_server.serve("/sms.zip", archive)
    with pytest.raises(DownloadError, match="unexpected SHA-256"):
        download_sms_spam(
            urls=(file_server.url("/sms.zip"),),
            archive_sha256=hashlib.sha256(archive).hexdigest(),
            file_sha256="0" * 64,
            progress=False,
        )


def test_load_data_prefers_a_given_file_and_records_it(tmp_path):
    path = write(tmp_path, SMALL_SMS)
    data = load_data(path, parsing="exact")
    assert data.provenance.source == "local"
    assert data.provenance.sha256 == hashlib.sha256(SMALL_SMS.encode()).hexdigest()
    assert data.classes == ("ham", "spam")
    assert len(data.frame) == 4


def test_load_data_reads_the_environment_variable_in_the_book_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLASSIFIER_SMS_FILE", str(write(tmp_path, PLAIN_SMS)))
    assert load_data(profile="book").provenance.source == "local"
    assert load_data(profile="smoke").provenance.source == "practice"


def test_load_data_reads_user_tables(tmp_path):
    data = load_data(write(tmp_path, "Text,Label\nhi,a\nho,b\nhu,c\n", "three.csv"))
    assert data.classes == ("a", "b", "c")
    assert data.provenance.source == "local"


SMS_NAMES = ["SMSSpamCollection.tsv", "messages.csv", "SMSSpamCollection", "sms.txt"]


@pytest.mark.parametrize("name", SMS_NAMES)
def test_load_data_reads_the_sms_format_whatever_the_files_name(tmp_path, name):
    data = load_data(write(tmp_path, PLAIN_SMS, name))
    assert data.classes == ("ham", "spam")
    assert data.frame.to_dict("list") == read_sms_spam(write(tmp_path, PLAIN_SMS)).to_dict("list")


@pytest.mark.parametrize("name", SMS_NAMES)
def test_the_book_profile_reads_an_sms_file_of_any_name(tmp_path, monkeypatch, name):
    monkeypatch.setenv("GPTCLASSIFIER_SMS_FILE", str(write(tmp_path, PLAIN_SMS, name)))
    data = load_data(profile="book")
    assert data.provenance.source == "local"
    assert data.frame["Label"].tolist() == ["ham", "spam", "ham"]


def test_load_data_reads_the_practice_set_saved_as_tsv(tmp_path):
    path = write(tmp_path, practice_file().read_bytes(), "practice.tsv")
    data = load_data(path)
    assert data.classes == ("ham", "spam")
    pd.testing.assert_frame_equal(data.frame, read_sms_spam(practice_file(), parsing="book"))


def test_load_data_parses_like_the_book_by_default(tmp_path):
    path = write(tmp_path, 'ham\t"opens a quote\nspam\tswallowed\nham\tcloses it"\nham\tok\n')
    assert len(load_data(path).frame) == 2
    assert len(load_data(path, parsing="exact").frame) == 4


def test_a_byte_order_mark_and_crlf_keep_a_tsv_in_the_sms_format(tmp_path):
    content = b"\xef\xbb\xbf" + PLAIN_SMS.replace("\n", "\r\n").encode()
    data = load_data(write(tmp_path, content, "SMSSpamCollection.tsv"))
    assert data.frame.to_dict("list") == read_sms_spam(write(tmp_path, PLAIN_SMS)).to_dict("list")


def test_load_data_reads_a_table_by_its_header_whatever_its_name(tmp_path):
    data = load_data(write(tmp_path, "Text,Label\nhi,a\nho,b\n", "mine.txt"))
    assert data.frame.to_dict("list") == {"Label": ["a", "b"], "Text": ["hi", "ho"]}
    tsv = load_data(write(tmp_path, "Label\tText\nspam\tWIN, now\nham\thi\n", "mine.csv"))
    assert tsv.frame.to_dict("list") == {"Label": ["spam", "ham"], "Text": ["WIN, now", "hi"]}
    custom = write(tmp_path, "id,message,mood\n1,great,good\n2,awful,bad\n", "reviews.csv")
    data = load_data(custom, text_column="message", label_column="mood")
    assert data.classes == ("bad", "good")
    assert data.frame["Text"].tolist() == ["great", "awful"]


def test_a_header_naming_one_column_is_a_table_missing_the_other(tmp_path):
    path = write(tmp_path, "Label\tMessage\nham\thi\n", "SMSSpamCollection.tsv")
    with pytest.raises(DataError, match="no column named 'Text' \\(columns: Label, Message\\)"):
        load_data(path)


@pytest.mark.parametrize("name", ["data.tsv", "data.csv", "data"])
def test_a_file_in_neither_format_gets_one_line_saying_what_was_expected(tmp_path, name):
    path = write(tmp_path, "hello world\nham\thi\n", name)
    with pytest.raises(DataError) as caught:
        load_data(path)
    assert str(caught.value) == (
        f"{path}: line 1 is neither an SMS Spam Collection line (ham or spam, a tab, the "
        "message) nor a header row naming the 'Text' and 'Label' columns: 'hello world'"
    )
    with pytest.raises(DataError, match="naming the 'review' and 'mood' columns"):
        load_data(path, text_column="review", label_column="mood")


@pytest.mark.parametrize("content", ["", "\ufeff", "\n \r\n\n"])
@pytest.mark.parametrize("name", ["SMSSpamCollection.tsv", "data.csv"])
def test_an_empty_data_file_holds_no_messages(tmp_path, content, name):
    path = write(tmp_path, content, name)
    with pytest.raises(DataError, match="the file holds no messages") as caught:
        load_data(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("parsing", ["exact", "book"])
def test_bytes_not_utf8_keep_the_readers_line_and_byte(tmp_path, parsing):
    sms = write(tmp_path, b"ham\tcaf\xe9\nspam\twin\n", "SMSSpamCollection.tsv")
    with pytest.raises(DataError, match="line 1 is not valid UTF-8 \\(byte 0xe9\\)"):
        load_data(sms, parsing=parsing)
    table = write(tmp_path, b"\xff,Text,Label\n1,hi,a\n", "table.txt")
    with pytest.raises(DataError, match="line 1 is not valid UTF-8 \\(byte 0xff\\)"):
        load_data(table, parsing=parsing)


def test_book_profile_offline_falls_back_to_practice_data_loudly():
    with pytest.warns(FallbackWarning, match="PRACTICE DATA SET") as caught:
        data = load_data(profile="book")
    message = str(caught[0].message)
    assert "GPTCLASSIFIER_SMS_FILE" in message and "archive.ics.uci.edu" in message
    assert data.provenance.source == "practice"
    assert data.provenance.note.startswith("fallback: could not download")
    assert set(data.frame["Label"]) == {"ham", "spam"}


def test_strict_mode_turns_the_fallback_into_an_error(monkeypatch):
    monkeypatch.setenv("GPTCLASSIFIER_STRICT", "1")
    with pytest.raises(DownloadError, match="GPTCLASSIFIER_SMS_FILE"):
        load_data(profile="book")
