import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.analysis import (
    _ASCII_TOKEN,
    _STANDARD_TOKEN,
    LUCENE_ENGLISH_STOP_WORDS,
    Analyzer,
    AnalyzerConfig,
    AnalyzerError,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ('hello--world ... "quoted"', ["hello", "world", "quoted"]),
        ("U.S.A. and e.g.", ["U.S.A", "and", "e.g"]),  # MidNumLet between letters joins (UAX #29 WB6/7)
        ("3.14 1,000,000 v1.2", ["3.14", "1,000,000", "v1.2"]),  # MidNum between digits joins (WB11/12)
        ("a.1 1.a", ["a", "1", "1", "a"]),  # a mid character between a letter and a digit breaks
        ("foo_bar ab12cd", ["foo_bar", "ab12cd"]),  # ExtendNumLet and letter-digit runs join (WB9/10/13a)
        ("don't it’s", ["don't", "it’s"]),
        ("end. Next", ["end", "Next"]),
        ("中文字 ひら", ["中", "文", "字", "ひ", "ら"]),  # ideographs and hiragana are one token each
        ("café naïve cafe\u0301", ["café", "naïve", "cafe\u0301"]),  # combining marks stay in the word
        ("m² H₂O ½", ["m", "H", "O"]),  # superscripts, subscripts and fractions are no word characters
        ("© ® x™ ☆ ★ 😀", ["©", "®", "x", "™", "★", "😀"]),  # pictographs are tokens of their own, ☆ is none
        ("_ __init__ foo_", ["__init__", "foo_"]),  # underscores join words but make none alone
        ("shrink\u00adage", ["shrink\u00adage"]),  # a soft hyphen (Format) does not break a word
    ],
)
def test_standard_tokenizer_follows_word_breaks(text, tokens):
    assert Analyzer().tokenize(text) == tokens


def test_english_analyzer_chain_matches_lucene():
    analyzer = Analyzer()
    # possessive removed, lower-cased, stop words dropped, Porter stems; words of <= 2 chars left unstemmed
    assert analyzer.analyze("The John's Ponies are RUNNING to us") == ["john", "poni", "run", "us"]
    assert analyzer.analyze("caresses generalizations") == ["caress", "gener"]


@pytest.mark.parametrize(
    ("word", "stem"),
    [
        ("assembly", "assembl"),  # Lucene's step 2 maps "bli" to "ble", then step 5 drops the "e"
        ("possibly", "possibl"),
        ("irreversibly", "irrevers"),  # ... or step 4 drops "ible"
        ("nobly", "nobli"),  # m = 0 before "bli": unchanged
        ("technology", "technolog"),  # "logi" -> "log"
        ("logic", "logic"),
        ("generalizations", "gener"),
    ],
)
def test_porter_follows_lucenes_porter_stemmer(word, stem):
    assert Analyzer().analyze(word) == [stem]


def test_long_tokens_are_cut_like_standard_tokenizer():
    tokens = Analyzer().tokenize("x" * 600)
    assert [len(t) for t in tokens] == [255, 255, 90]


def test_stop_set_is_lucenes():
    assert len(LUCENE_ENGLISH_STOP_WORDS) == 33
    assert Analyzer().analyze(" ".join(LUCENE_ENGLISH_STOP_WORDS)) == []


def test_configurations():
    plain = Analyzer(AnalyzerConfig(stemmer=None, stopwords=()))
    assert plain.analyze("The Running dogs") == ["the", "running", "dogs"]
    keep_case = Analyzer(AnalyzerConfig(lowercase=False, stemmer=None))
    assert keep_case.analyze("Big DOGS") == ["Big", "DOGS"]
    whitespace = Analyzer(AnalyzerConfig(tokenizer="whitespace", stemmer=None, stopwords=()))
    assert whitespace.analyze("pre-tokenized text_here x.y") == ["pre-tokenized", "text_here", "x.y"]
    german = Analyzer(AnalyzerConfig(stemmer="german", stopwords=("der",)))
    assert german.analyze("der Häuser") == ["haus"]


def test_config_round_trips_through_the_manifest_dict():
    config = AnalyzerConfig(stemmer="english", stopwords=("foo", "bar"), lowercase=False)
    assert AnalyzerConfig.from_dict(config.to_dict()) == AnalyzerConfig(
        stemmer="english", stopwords=("bar", "foo"), lowercase=False
    )
    default = AnalyzerConfig.from_dict(AnalyzerConfig().to_dict())
    assert Analyzer(default).analyze("the dogs") == Analyzer().analyze("the dogs")


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(AnalyzerError, match="unknown stemmer 'klingon'"):
        Analyzer(AnalyzerConfig(stemmer="klingon"))
    with pytest.raises(AnalyzerError, match="unknown tokenizer"):
        Analyzer(AnalyzerConfig(tokenizer="icu"))


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
def test_ascii_fast_path_tokenizes_as_the_unicode_grammar(text):
    assert _ASCII_TOKEN.findall(text) == _STANDARD_TOKEN.findall(text)


_BATCH_TEXT = st.lists(st.sampled_from([*"abcXYZ'’ \t\n\x1c\x0béß.,-", "ab" * 130]), max_size=40).map("".join)


@pytest.mark.parametrize(
    "config",
    [
        AnalyzerConfig(tokenizer="whitespace", possessives=False, stopwords=(), stemmer=None),
        AnalyzerConfig(tokenizer="whitespace", lowercase=False, possessives=False, stopwords=(), stemmer=None),
        AnalyzerConfig(tokenizer="whitespace", stopwords=(), stemmer=None),
        AnalyzerConfig(),
    ],
)
@given(texts=st.lists(_BATCH_TEXT, max_size=8))
def test_batch_analysis_gives_the_terms_of_analyze(config, texts):
    analyzer = Analyzer(config)
    batch = analyzer.analyze_batch(texts)
    expected = [analyzer.analyze(text) for text in texts]
    assert batch.counts.tolist() == [len(terms) for terms in expected]
    assert batch.terms() == [term for terms in expected for term in terms]
