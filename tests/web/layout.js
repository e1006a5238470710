// What tests/ui/test_widths.py checks of a page's layout, run in the page by Playwright:
// elements wider than the window (outside a box that scrolls), and text cut off (overflow
// hidden, an ellipsis or a line clamp) with no title to read it in full.
() => {
  const width = document.documentElement.clientWidth;
  const name = (el) => {
    const classes = typeof el.className === "string" ? el.className.trim().split(/\s+/) : [];
    return el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      classes.filter(Boolean).map((c) => "." + c).join("");
  };
  const path = (el) => {
    const parts = [];
    for (let e = el; e && e !== document.body && parts.length < 4; e = e.parentElement) {
      parts.unshift(name(e));
    }
    return parts.join(" > ");
  };
  const scrolls = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (/(auto|scroll)/.test(getComputedStyle(p).overflowX)) return true;
    }
    return false;
  };
  const wide = [];
  const cut = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest(".sr-only, .skip, [hidden]")) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    if ((box.right > width + 1 || box.left < -1) && !scrolls(el)) {
      wide.push(`${path(el)} (${Math.round(box.left)} to ${Math.round(box.right)} of ${width})`);
    }
    const style = getComputedStyle(el);
    const clips = style.overflowX === "hidden" || style.overflowY === "hidden" ||
      style.textOverflow === "ellipsis";
    const over = el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 2;
    const titled = el.closest("[title]") || el.querySelector("[title]");
    if (clips && over && el.textContent.trim() && !titled) {
      cut.push(`${path(el)}: ${el.textContent.trim().slice(0, 60)}`);
    }
  }
  return {
    scrollWidth: document.documentElement.scrollWidth,
    width,
    wide: wide.slice(0, 15),
    cut: cut.slice(0, 15),
  };
}
