#!/usr/bin/python3
"""An independent GPT-2 BPE encoder, the reference for eellm's tokenizer tests.

It follows the algorithm of OpenAI's encoder.py: split the text with GPT-2's regex
(the `regex` module, for \\p{L} and \\p{N}), spell each piece's UTF-8 bytes in
GPT-2's byte alphabet, then merge adjacent parts, every occurrence of the
lowest-ranked pair of vocab.bpe at a time, until no pair has a rank.

usage: gpt2_reference.py DIR < IN > OUT
DIR holds encoder.json and vocab.bpe. Each line of IN is a UTF-8 string in hex;
the same line of OUT is its ids, separated by spaces.
"""
import json
import sys

import regex

PRETOKENS = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_alphabet():
    """Byte -> the character GPT-2 spells it with: printable Latin-1 bytes as
    themselves, the rest in order from U+0100."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in spelling]
    spelling.update({b: chr(0x100 + i) for i, b in enumerate(others)})
    return spelling


class Gpt2:
    def __init__(self, directory):
        with open(f"{directory}/encoder.json", encoding="utf-8") as f:
            self.ids = json.load(f)
        with open(f"{directory}/vocab.bpe", encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n")[1:] if line]
        self.rank = {tuple(line.split(" ")): r for r, line in enumerate(lines)}
        self.spelling = byte_alphabet()
        self.words = {}

    def merge(self, word):
        parts = list(word)
        while len(parts) > 1:
            ranked = [(self.rank[p], p) for p in zip(parts, parts[1:]) if p in self.rank]
            if not ranked:
                break
            best = min(ranked)[1]
            merged, i = [], 0
            while i < len(parts):
                if tuple(parts[i:i + 2]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.ids[p] for p in parts]

    def encode(self, text):
        ids = []
        for piece in PRETOKENS.findall(text):
            word = "".join(self.spelling[b] for b in piece.encode("utf-8"))
            if word not in self.words:
                self.words[word] = self.merge(word)
            ids.extend(self.words[word])
        return ids


def main():
    gpt2 = Gpt2(sys.argv[1])
    for line in sys.stdin:
        text = bytes.fromhex(line.strip()).decode("utf-8")
        print(" ".join(map(str, gpt2.encode(text))))


if __name__ == "__main__":
    main()
