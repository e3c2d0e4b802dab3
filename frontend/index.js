// Entry point of the Gradient Health tab: loads its styles, then starts the app in the page.

import {App} from './app.js';
import {el} from './dom.js';
import {Host} from './host.js';

const STYLESHEETS = ['./vendor/uplot/uPlot.min.css', './style.css'];
// Charts measure their boxes: wait for the styles, but never hang on a missing one.
const STYLESHEET_TIMEOUT_MS = 3000;

function loadStylesheets() {
  return Promise.all(
    STYLESHEETS.map((href) => {
      const link = el('link', {rel: 'stylesheet', href: new URL(href, import.meta.url).href});
      const loaded = new Promise((resolve) => {
        link.addEventListener('load', resolve);
        link.addEventListener('error', resolve);
        setTimeout(resolve, STYLESHEET_TIMEOUT_MS);
      });
      document.head.appendChild(link);
      return loaded;
    }),
  );
}

/** Called by TensorBoard's plugin frame once this module is imported. */
export async function render() {
  document.body.classList.add('gradient-health');
  await loadStylesheets();
  new App(document.body, new Host()).start();
}
