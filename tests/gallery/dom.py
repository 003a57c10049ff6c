"""A minimal HTML tree (standard library html.parser) for structural checks of the gallery pages; it also fails
on unbalanced tags, so a test that parses a page checks that the markup nests properly."""
from __future__ import annotations

from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
  """An element.

  Attributes:
    tag: element name ('#root' for the document).
    attrs: attribute dict.
    children: child elements and text strings, in order.
    parent: the parent node.
  """

  def __init__(self, tag, attrs, parent=None):
    self.tag, self.attrs, self.children, self.parent = tag, dict(attrs), [], parent

  @property
  def text(self) -> str:
    return "".join(c if isinstance(c, str) else c.text for c in self.children)

  def classes(self) -> set:
    return set((self.attrs.get("class") or "").split())

  def iter(self):
    for c in self.children:
      if isinstance(c, Node):
        yield c
        yield from c.iter()

  def find_all(self, tag=None, cls=None, **attrs) -> list:
    out = []
    for n in self.iter():
      if tag and n.tag != tag:
        continue
      if cls and cls not in n.classes():
        continue
      if any(n.attrs.get(k.replace("_", "-")) != v for k, v in attrs.items()):
        continue
      out.append(n)
    return out

  def find(self, tag=None, cls=None, **attrs):
    found = self.find_all(tag, cls, **attrs)
    return found[0] if found else None

  def by_id(self, ident: str):
    return self.find(id=ident)


class _Builder(HTMLParser):
  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.root = Node("#root", {})
    self.cur = self.root

  def handle_starttag(self, tag, attrs):
    node = Node(tag, attrs, self.cur)
    self.cur.children.append(node)
    if tag not in VOID:
      self.cur = node

  def handle_startendtag(self, tag, attrs):
    self.cur.children.append(Node(tag, attrs, self.cur))

  def handle_endtag(self, tag):
    if tag in VOID:
      return
    if self.cur.tag != tag:
      raise AssertionError(f"unbalanced HTML: </{tag}> closes <{self.cur.tag}>")
    self.cur = self.cur.parent

  def handle_data(self, data):
    self.cur.children.append(data)


def parse(text: str) -> Node:
  b = _Builder()
  b.feed(text)
  b.close()
  if b.cur is not b.root:
    raise AssertionError(f"unclosed <{b.cur.tag}>")
  return b.root
