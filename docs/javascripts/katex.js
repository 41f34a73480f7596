// Typesets the math that `pymdownx.arithmatex` (generic mode) leaves in the page,
// with the KaTeX copied into docs/vendor/katex/, so that no formula needs the
// network. Inline math arrives as `<span class="arithmatex">\(...\)</span>`,
// display math as `<div class="arithmatex">\[...\]</div>` (or a bare
// `\begin{env}...\end{env}`). A formula KaTeX cannot parse is shown as its
// source, in red, rather than breaking the rest of the page.
document$.subscribe(({ body }) => {
  for (const el of body.querySelectorAll(".arithmatex")) {
    if (el.querySelector(".katex")) continue; // already typeset
    let tex = el.textContent.trim();
    if (/^\\[([]/.test(tex) && /\\[)\]]$/.test(tex)) tex = tex.slice(2, -2);
    katex.render(tex, el, {
      displayMode: el.tagName !== "SPAN",
      throwOnError: false,
    });
  }
});
