// A work module that never finishes an item: the tab holds its leases until it goes away.
export function work() {
  return new Promise(() => {});
}
