// A work module that holds every item until the test calls globalThis.openGate() in this
// Web Worker; then it answers each item with its text's length.
let open;
const opened = new Promise((resolve) => {
  open = resolve;
});
globalThis.openGate = () => open();

export async function work(item) {
  await opened;
  return { length: item.text.length };
}
