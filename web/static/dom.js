// The one way the front end builds markup: elements from createElement, text from text nodes.
// Names in the data (classes, modalities, metrics, datasets) are never parsed as HTML, so a
// name like `<img src=x onerror=...>` shows as those characters. Loaded before every other script.
"use strict";

// el("td", { class: "n", style: { background: c }, dataset: { k: "v" } }, "text", node, [more])
// Strings and numbers become text nodes; null, undefined and false are skipped; arrays are
// flattened. `style` is an object applied through the CSSOM (a `style` attribute would be
// refused by the Content-Security-Policy); `on...` attributes are refused: add listeners instead.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (/^on/i.test(key)) throw new Error(`el(): no inline handler (${key}); use addEventListener`);
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  appendChildren(node, children);
  return node;
}

function appendChildren(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) appendChildren(node, child);
    else node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
