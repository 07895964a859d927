// Text statistics for one item, computed in the browser (or in Node 20+): a work module
// for Planchet's worker page.
//
//   planchet serve --data-dir data --pages examples/browser
//   open http://127.0.0.1:5005/worker?job=NAME&work=/pages/textstats.js#token=...
//
// Words and sentences come from Intl.Segmenter (Unicode's rules, so "don't", "U.S." and
// text without spaces are handled), not from splitting on spaces. For each item:
//
//   characters    user-perceived characters (grapheme clusters: "é" or "👍🏽" count one)
//   letters       characters that are letters, in any script
//   words         word-like segments; uniqueWords: distinct ones, case folded
//   sentences     sentences with at least one word
//   averageWordLength, wordsPerSentence
//   syllables     an English estimate (vowel groups), for the score below
//   readingEase   Flesch reading ease: 100 is very easy, 0 very hard (null without words)
//   topWords      the five most frequent words of three letters or more, common English
//                 words left out: [[word, count], ...], the most frequent first

const LOCALE = "en";
const PIECE = 2000; // characters segmented at once (see pieces)
const TOP = 5;
const STOP_WORDS = new Set(
  ("the and for are but not you all any can had her was one our out has his how its may new " +
    "now old see two who did get him let say she too use with that this from have they will " +
    "your what when were been into than them then there these their which would about could " +
    "should after over also just more most some such only other").split(" "),
);

const graphemes = new Intl.Segmenter(LOCALE, { granularity: "grapheme" });
const wordSegments = new Intl.Segmenter(LOCALE, { granularity: "word" });
const sentenceSegments = new Intl.Segmenter(LOCALE, { granularity: "sentence" });

/** The text of an item: a string, or its `text` field (else its first string field). */
export function textOf(item) {
  if (typeof item === "string") return item;
  if (item && typeof item === "object") {
    if (typeof item.text === "string") return item.text;
    const first = Object.values(item).find((value) => typeof value === "string");
    if (first !== undefined) return first;
  }
  throw new Error("the item has no text: expected a string or an object with a string field");
}

/** Statistics of one item (see the top of this file). */
export function work(item) {
  const text = textOf(item);
  const words = wordsOf(text);
  const sentences = countSentences(text);
  const syllables = words.reduce((sum, word) => sum + countSyllables(word), 0);
  const letters = countLetters(text);
  return {
    characters: countGraphemes(text),
    letters,
    words: words.length,
    uniqueWords: new Set(words).size,
    sentences,
    averageWordLength: words.length ? round(letters / words.length, 2) : 0,
    wordsPerSentence: sentences ? round(words.length / sentences, 2) : 0,
    syllables,
    readingEase: readingEase(words.length, sentences, syllables),
    topWords: topWords(words),
  };
}

/**
 * `text` in pieces of at most PIECE characters, cut after a sentence's end or a line
 * break, else after a space (a piece with neither is cut where it must). Segmenting a
 * long string at once is slow: the time V8 spends per segment grows with the string's
 * length (a 300 KB text took minutes in Node 20), so a long text is segmented in pieces.
 */
export function* pieces(text) {
  let start = 0;
  while (text.length - start > PIECE) {
    const window = text.slice(start, start + PIECE);
    let cut = lastEnd(window, /[.!?\u3002\uff01\uff1f]\s+|\n+/g) || lastEnd(window, /\s+/g) || PIECE;
    if (/[\ud800-\udbff]/.test(window[cut - 1])) cut -= 1; // never halve a surrogate pair
    yield window.slice(0, cut);
    start += cut;
  }
  yield text.slice(start);
}

function lastEnd(window, pattern) {
  let end = 0;
  for (const match of window.matchAll(pattern)) end = match.index + match[0].length;
  return end;
}

function countGraphemes(text) {
  let n = 0;
  for (const piece of pieces(text)) for (const _ of graphemes.segment(piece)) n += 1;
  return n;
}

/** The word-like segments of `text`, lower-cased. */
function wordsOf(text) {
  const words = [];
  for (const piece of pieces(text)) {
    for (const { segment, isWordLike } of wordSegments.segment(piece)) {
      if (isWordLike) words.push(segment.toLocaleLowerCase(LOCALE));
    }
  }
  return words;
}

function countSentences(text) {
  let sentences = 0;
  for (const piece of pieces(text)) {
    for (const { segment } of sentenceSegments.segment(piece)) {
      if (/[\p{L}\p{N}]/u.test(segment)) sentences += 1;
    }
  }
  return sentences;
}

function countLetters(text) {
  return text.match(/\p{L}/gu)?.length ?? 0;
}

/** Vowel groups, less a silent final "e"; at least one per word that has letters. */
export function countSyllables(word) {
  const latin = word.replace(/[^a-z]/g, "");
  if (!latin) return /\p{L}/u.test(word) ? 1 : 0;
  let groups = latin.match(/[aeiouy]+/g)?.length ?? 0;
  if (latin.length > 2 && /[^l]e$/.test(latin)) groups -= 1; // "make", but "table"
  return Math.max(1, groups);
}

/** Flesch reading ease, rounded to one decimal; null when there is nothing to score. */
function readingEase(words, sentences, syllables) {
  if (!words || !sentences) return null;
  return round(206.835 - 1.015 * (words / sentences) - 84.6 * (syllables / words), 1);
}

function topWords(words) {
  const counts = new Map();
  for (const word of words) {
    if (word.length >= 3 && !STOP_WORDS.has(word) && /\p{L}/u.test(word)) {
      counts.set(word, (counts.get(word) ?? 0) + 1);
    }
  }
  return [...counts]
    .sort(([a, m], [b, n]) => n - m || (a < b ? -1 : a > b ? 1 : 0))
    .slice(0, TOP);
}

function round(value, digits) {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
