"""Cutting an element's units at fixed places (elements.py's union-find): an uneven split or a slice
of a channel axis (DPN, ReXNet, FasterNet), plain units summed with a concatenation (cut as its
parts are), two concatenations summed (cut at both's seams: GhostNet). The element becomes a
concatenation of new elements, one per piece, each free to move on its own; a concatenation
moves as its parts do (models/concat.py)."""

from __future__ import annotations


class Cuts:
    """Elements' methods that cut (mixed into Elements, whose union-find fields they use)."""

    def meet_concatenation(self, ra: int, rb: int, where: str) -> int | None:
        """union() of roots ra and rb when one or both are concatenations whose units can be cut
        alike, part meeting part: the root of the union; None if neither is, or they cannot be."""
        for cat, plain in ((ra, rb), (rb, ra)):  # a concatenation met by plain units: cut them as its parts are
            if cat in self.members and plain not in self.members and self.size[cat] == self.size[plain] and not self.blank(plain) and \
                    (pieces := self.cut(plain, [n for _, n in self.parts(cat)], where)) is not None:
                return self._join(cat, plain, [p for p, _ in self.parts(cat)], pieces, where)
        if ra in self.members and rb in self.members and self.size[ra] == self.size[rb] and self.parts(ra) != self.parts(rb):
            seams = [_bounds(n for _, n in self.parts(r)) for r in (ra, rb)]
            while seams[0] != seams[1]:  # two concatenations: cut both at both's seams (a part met twice gains them twice)
                if not all([self._refine(r, seams[0] | seams[1], where) for r in (ra, rb)]):
                    return None
                seams = [_bounds(n for _, n in self.parts(r)) for r in (ra, rb)]
            return self._join(ra, rb, [p for p, _ in self.parts(ra)], [q for q, _ in self.parts(rb)], where)
        return None

    def _join(self, a: int, b: int, parts_a: list, parts_b: list, where: str) -> int:
        """Unite two concatenations part by part (channels no group carries freeze what they meet), then as wholes."""
        for p, q in zip(parts_a, parts_b):
            if p is not None and q is not None:
                self.union(p, q, where)
            elif p is not None or q is not None:
                self.freeze(q if p is None else p, f"combined with channels no group carries at {where}")
        return self.union(a, b, where)

    def cut(self, e: int, sizes: list[int], where: str) -> list[int | None] | None:
        """One element per piece of `sizes` (in order) that e's units are cut into at fixed places (an
        uneven split or a slice of a channel axis: DPN, ReXNet, FasterNet): e becomes a concatenation of
        new elements, one per piece, each free to move on its own. A concatenation already cut at those
        places gives its parts (None: channels no group carries; a new concatenation for a piece of
        several). None where e cannot be cut: frozen, heads, packed copies, or cut elsewhere."""
        r = self.find(e)
        if r in self.members:
            have, want = _bounds(n for _, n in self.parts(r)), _bounds(sizes)
            if self.frozen(r) or not want <= have and not self._refine(r, want, where):  # sliced again elsewhere: cut the parts too
                return None
            pieces, parts = [], iter(self.parts(r))
            for n in sizes:
                run = [next(parts)]
                while sum(size for _, size in run) < n:
                    run.append(next(parts))
                pieces.append(run[0][0] if len(run) == 1 else self.concat(run, where))
            return pieces
        if self.frozen(r) or self.blank(r) or r in self.heads or r in self.packed or r in self.head_of or r in self.expands or \
                r in {self.find(p) for p, *_ in self.packed.values()}:
            return None
        parts = [self.new(n) for n in sizes]
        writer, offset = (self.writers[r][0], 0) if self.writers[r] else self.labels[r]
        for p, a in zip(parts, _bounds(sizes, start=True)):
            self.opened.append(p)
            self.labels[p] = (writer, offset + a)
        c = self.concat([(p, n) for p, n in zip(parts, sizes)], where)
        self.parent[r], self.writers[c] = c, list(self.writers[r])
        self.cuts.add(c)
        return parts

    def _refine(self, r: int, seams: set[int], where: str) -> bool:
        """Cut the parts of concatenation r at `seams` too; False if a part cannot be cut there."""
        at = 0
        for p, n in self.parts(r):
            inner = sorted(b - at for b in seams if at < b < at + n)
            if inner and (p is None or self.cut(p, [y - x for x, y in zip([0] + inner, inner + [n])], where) is None):
                return False
            at += n
        return True


def _bounds(sizes, start: bool = False):
    """The places between consecutive pieces of `sizes` (a set); start=True: each piece's first index, in order."""
    at, out = 0, []
    for n in sizes:
        out.append(at)
        at += n
    return out if start else set(out[1:])
