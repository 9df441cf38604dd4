"""The union-find behind traced specs: candidate groups of units (elements), what freezes them,
their heads and packed copies, the element each tensor axis carries (Ref), and the coverage report."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionctl.models.cuts import Cuts


@dataclass(frozen=True)
class Ref:
    """An axis of a tensor laid out as (outer, n, inner) over the n units of element `el`; or, once a
    reshape splits the units into heads (n = heads x d), part 1: the axis of heads, part 2: the
    axis of the d channels within a head."""

    el: int
    outer: int = 1
    inner: int = 1
    part: int = 0


@dataclass
class Coverage:
    """What a traced spec aligns: hidden units in permutable groups, and what froze the rest."""

    permutable: int = 0
    hidden: int = 0
    frozen: dict[str, list[str]] = field(default_factory=dict)  # reason -> modules whose units it froze
    heads: int = 0  # permutable groups of attention heads (moved as whole heads and within each)
    grouped: int = 0  # permutable groups of a grouped conv's channels (moved as whole blocks and within each)
    concats: int = 0  # concatenations along a channel axis, moved part by part (spec.concat)
    whole: int = 0  # groups of heads moved only whole (spec.whole_heads: rotary embeddings)
    experts: int = 0  # mixtures whose experts move as a group (models/experts.py, confirmed by the self-check)
    checked: str = ""  # what the permutation self-check measured (fusion/spec_check.py), once run

    def __str__(self) -> str:
        text = f"permutable hidden units: {self.permutable:,} of {self.hidden:,}"
        kinds = ((self.heads, "attention heads"), (self.grouped, "grouped-conv channels"))
        among = [f"{n} group{'s' if n > 1 else ''} of {what}" for n, what in kinds if n]
        if among:
            text += f" ({' and '.join(among)} among them{f', {self.whole} moved only as whole heads' if self.whole else ''})"
        if self.concats:
            text += f"; {self.concats} concatenation{'s' if self.concats > 1 else ''} moved part by part"
        if self.experts:
            text += f"; the experts of {self.experts} mixture{'s' if self.experts > 1 else ''} moved as a group each"
        if self.frozen:
            parts = [f"{', '.join(mods[:3])}{f' (+{len(mods) - 3} more)' if len(mods) > 3 else ''} ({reason})" for reason, mods in self.frozen.items()]
            text += "; frozen: " + "; ".join(parts)
        return text + (f"; checked: {self.checked}" if self.checked else "")


class Elements(Cuts):
    """Union-find over candidate groups of units: size, the modules that open them, and freezes."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.writers: list[list[str]] = []  # per element: modules whose output opens it
        self.reasons: dict[int, list[str]] = {}  # root -> why it is frozen
        self.opened: list[int] = []  # elements opened by a module, in creation order
        self.heads: dict[int, int] = {}  # root -> number of heads its units form (they move only within and as whole heads)
        # root -> (element, k, interleaved): its units are k copies of that element's, stacked (q, k, v of
        # one Linear) or interleaved unit by unit (gpt-oss's gate and up: x[..., ::2], x[..., 1::2])
        self.packed: dict[int, tuple[int, int, bool]] = {}
        # concatenation element (as made, never re-keyed) -> the parts its units concatenate, in
        # order: (element, or None for channels no group carries, size); the op that made it; and
        # root -> the concatenations it holds (two when one is reached twice, or when a sum froze them)
        self.concats: dict[int, list[tuple[int | None, int]]] = {}
        self.concat_at: dict[int, str] = {}
        self.members: dict[int, list[int]] = {}
        self.head_of: dict[int, int] = {}  # root of a parameter's axis -> the element whose heads it indexes (a bias per head)
        self.whole: set[int] = set()  # roots whose heads move only whole (rotary embeddings fix each channel's place in its head)
        self.expands: dict[int, tuple[int, int, int]] = {}  # root -> (element, outer, mid): query heads copying a key's (GQA)
        self.cuts: set[int] = set()  # concatenations made by cutting an element's units (as made, never re-keyed)
        self.labels: dict[int, tuple[str, int]] = {}  # a cut's part -> (writer, first unit): "writer[a:b]" names it

    def new(self, size: int, writer: str | None = None, frozen: str | None = None) -> int:
        e = len(self.parent)
        self.parent.append(e)
        self.size.append(size)
        self.writers.append([writer] if writer else [])
        if writer:
            self.opened.append(e)
        if frozen:
            self.reasons[e] = [frozen]
        return e

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]
            e = self.parent[e]
        return e

    def freeze(self, e: int, reason: str) -> None:
        self.reasons.setdefault(self.find(e), []).append(reason)

    def frozen(self, e: int) -> bool:
        return self.find(e) in self.reasons

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        for wide, narrow in ((ra, rb), (rb, ra)):  # the query heads' channels meet their key's: consistent as they are
            if wide in self.expands and self.find(self.expands[wide][0]) == narrow:
                return wide
        if self.size[ra] != self.size[rb]:
            self.freeze(ra, f"size mismatch at {where}")
            self.freeze(rb, f"size mismatch at {where}")
        if (joined := self.meet_concatenation(ra, rb, where)) is not None:
            return joined
        # one concatenation reached twice moves as one, and a parameter's blank axis (a scale
        # multiplying it) follows it; anything else carries units of its own in another layout
        clash = (ra in self.members or rb in self.members) and not self.blank(ra) and not self.blank(rb) and \
            not (ra in self.members and rb in self.members and self.parts(ra) == self.parts(rb))
        keep, gone = (ra, rb) if ra < rb else (rb, ra)
        self.parent[gone] = keep
        self.writers[keep] += self.writers[gone]
        if gone in self.reasons:
            self.reasons.setdefault(keep, []).extend(self.reasons.pop(gone))
        if gone in self.heads:
            self.set_heads(keep, self.heads.pop(gone), where)
        if gone in self.whole:
            self.whole.discard(gone)
            self.whole.add(keep)
        if gone in self.expands:
            self._expand(keep, *self.expands.pop(gone), where)
        if clash:
            self.freeze(keep, f"concatenation combined with another tensor at {where}")
        if ra in self.head_of or rb in self.head_of:  # a per-head parameter read another way too: its heads cannot move
            for r in (ra, rb):
                for e in (r, self.head_of.get(r)):
                    if e is not None:
                        self.freeze(e, f"a per-head parameter combined with another tensor at {where}")
            if gone in self.head_of:
                self.head_of.setdefault(keep, self.head_of.pop(gone))
        if ra in self.members or rb in self.members:
            self.members[keep] = self.members.pop(keep, []) + self.members.pop(gone, [])
        if ra in self.packed or rb in self.packed:  # a packed projection read as a whole elsewhere: its parts cannot move alone
            for r in (ra, rb):
                self.freeze(r, f"packed projection used whole at {where}")
            if gone in self.packed:
                self.packed.setdefault(keep, self.packed.pop(gone))
        return keep

    def pack(self, e: int, count: int, where: str, suffix: str = "parts", interleaved: bool = False) -> int:
        """The element of which e's units are `count` stacked (or interleaved) copies (a packed q/k/v
        projection, a GLU's halves), made once: the copies move together."""
        root = self.find(e)
        if root not in self.packed:
            name = f"{self.writers[root][0]}.{suffix}" if self.writers[root] else None
            self.packed[root] = (self.new(self.size[root] // count, name), count, interleaved)
            if root in self.labels and root in self.opened:  # stacked experts' gate and up halves
                self.open_unobserved(self.packed[root][0], f"{self.labels[root][0]}.{suffix}")
        part, known, layout = self.packed[root]
        if (known, layout) != (count, interleaved):
            self.freeze(root, f"packed projection split {count} and {known} ways, or stacked and interleaved, at {where}")
        return part

    def index_heads(self, heads, other, where: str) -> bool:
        """Whether axis `other` (a Ref) can index the heads that axis `heads` splits its element into:
        a parameter's blank axis with one entry per head (a relative-position bias added to the
        attention logits), or the outputs of one module that computes a value per head (a gate or
        decay of linear attention), moves with whole heads. Recorded in head_of."""
        rh, ro = self.find(heads.el), self.find(other.el)
        if (heads.part, heads.outer, heads.inner, other.part, other.outer, other.inner) != (1, 1, 1, 0, 1, 1) or \
                not (self.blank(ro) or self.per_head_writer(ro)) or ro in self.heads or self.size[ro] != self.heads.get(rh):
            return False
        if self.find(self.head_of.setdefault(ro, rh)) != rh:  # one table for two attentions: neither moves
            self.freeze(self.head_of[ro], f"a per-head parameter shared by two attentions at {where}")
            return False
        return True

    def expand_heads(self, heads, other, where: str) -> bool:
        """Whether axis `other` (a Ref) holds copies of another element's heads (repeat_interleave, or
        expand and reshape, of a key/value head for the query heads that share it) where axis
        `heads` (part 1) has its own: those heads then move as copies of the key's (spec Axis.mid,
        or outer for tiled copies) and their channels within each head as the key's do."""
        if (heads.part, heads.outer, heads.inner, other.part) != (1, 1, 1, 0) or min(other.outer, other.inner) != 1:
            return False
        rh, base = self.find(heads.el), self.head_of.get(self.find(other.el))
        copies = other.outer * other.inner
        if base is None or copies < 2 or self.find(base) == rh:
            return False
        rk = self.find(base)
        if self.heads.get(rh) != self.heads.get(rk, 0) * copies or self.size[rh] != self.size[rk] * copies:
            return False
        self._expand(rh, rk, other.outer, other.inner, where)
        return True

    def _expand(self, root: int, base: int, outer: int, mid: int, where: str) -> None:
        known = self.expands.setdefault(root, (base, outer, mid))
        if known[1:] != (outer, mid):
            self.freeze(root, f"heads copied in two layouts at {where}")
        elif self.find(known[0]) != self.find(base):  # the keys and the values of the same query heads: one group, as in MHA
            self.union(known[0], base, where)

    def head_blocks(self, e: int) -> int:
        """A new element with one unit per head of e (recorded in head_of): an axis that holds a
        block of channels per head that no group moves (LeViT's values merged back) moves with
        whole heads."""
        root = self.find(e)
        b = self.new(self.heads[root])
        self.head_of[b] = root
        return b

    def keep_in_place(self, within) -> bool:
        """Whether axis `within` (a Ref) is the channels within the heads of an element split into
        several, which can stay where they are while whole heads move. A within-head axis met by a
        tensor no group carries (a rotary embedding's fixed cos/sin table) or sliced (its
        rotate-half) is the same op for every head, so it commutes with moving whole heads; that
        element's heads then move only whole."""
        root = self.find(within.el)
        if within.part != 2 or self.heads.get(root, 1) < 2:
            return False
        self.whole.add(root)
        return True

    def shared_by_heads(self, within, other) -> bool:
        """Whether axis `other` (a Ref) is a parameter's blank axis with one entry per channel of a
        head, the same for every head (a norm over each head's channels: Gemma's q_norm), meeting
        the within-head axis `within` (part 2): fine once those heads move only whole
        (keep_in_place); the parameter then never moves."""
        ro, rw = self.find(other.el), self.find(within.el)
        if (other.part, other.outer, other.inner) != (0, 1, 1) or not self.blank(ro) or \
                self.size[ro] * self.heads.get(rw, 0) != self.size[rw] or not self.keep_in_place(within):
            return False
        self.freeze(ro, "a parameter shared by every head")
        return True

    def open_unobserved(self, e: int, name: str) -> None:
        """Make e's units a candidate group, named name[a:b], though no module outputs them (a mixture
        of experts' stacked weights): aligned on its weights, never observed."""
        r = self.find(e)
        if not self.writers[r] and r not in self.labels:
            self.opened.append(r)
            self.labels[r] = (name, 0)

    def per_head_writer(self, r: int) -> bool:
        """Whether root r is one module's outputs and nothing else yet (no heads, parts or copies of
        its own), which can take one value per head of another element."""
        return len(self.writers[r]) == 1 and r not in self.expands and self._untied(r)

    def blank(self, r: int) -> bool:
        """Whether root r is a parameter's axis that nothing has tied to units yet."""
        return not self.writers[r] and self._untied(r)

    def _untied(self, r: int) -> bool:
        """Root r is no concatenation, packed projection or named part (a cut, stacked experts), and not frozen."""
        return r not in self.members and r not in self.packed and r not in self.reasons and r not in self.labels

    def concat(self, parts: list[tuple[int | None, int]], where: str) -> int:
        """The element of a concatenation of `parts` ((element or None, size) each, in order);
        a part that is itself a concatenation contributes its own parts."""
        flat: list[tuple[int | None, int]] = []
        for el, size in parts:
            root = self.find(el) if el is not None else None
            flat += self.concats[self.members[root][0]] if root in self.members else [(el, size)]
        e = self.new(sum(size for _, size in flat))
        self.concats[e] = flat
        self.concat_at[e] = where
        self.members[e] = [e]
        return e

    def parts(self, e: int) -> list[tuple[int | None, int]]:
        """The parts of concatenation `e` (or of the first one its root holds), each element
        replaced by its current root."""
        own = e if e in self.concats else self.members[self.find(e)][0]
        out: list[tuple[int | None, int]] = []
        for el, size in self.concats[own]:  # a part cut since (Elements.cut) contributes its own parts
            r = None if el is None else self.find(el)
            out += self.parts(r) if r in self.members and r != self.find(own) else [(r, size)]
        return out

    def set_heads(self, e: int, count: int, where: str) -> None:
        root = self.find(e)
        if self.heads.setdefault(root, count) != count:
            self.freeze(root, f"split into {count} and into {self.heads[root]} heads at {where}")
