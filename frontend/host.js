// Talking to the TensorBoard page around the tab's iframe: its reload button (and auto-reload) refresh the tab.

// TensorBoard's plugin host protocol (tensorboard/components/experimental/plugin_util): the
// iframe posts this string with a MessagePort to its parent; the host then sends JSON
// messages {type, id, payload, isReply} through the port and expects a reply to each.
const BOOTSTRAP_MESSAGE = 'experimental.bootstrap';
const DATA_RELOADED = 'experimental.DataReloaded';

/**
 * Calls `onReload` whenever TensorBoard reloads its data; returns false outside TensorBoard.
 *
 * Only a parent of our own origin is addressed, so the port never leaks to a foreign page.
 */
export function listenForTensorBoardReload(onReload) {
  if (window.parent === window) return false;
  const channel = new MessageChannel();
  channel.port1.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!message || message.isReply) return;
    if (message.type === DATA_RELOADED) onReload();
    channel.port1.postMessage(JSON.stringify({type: message.type, id: message.id, payload: null, error: null, isReply: true}));
  };
  try {
    window.parent.postMessage(BOOTSTRAP_MESSAGE, window.location.origin, [channel.port2]);
  } catch {
    return false;
  }
  return true;
}
