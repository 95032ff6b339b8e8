// A minimal live view of /events; the full Mission Control dashboard builds on it.
(function () {
  const list = document.getElementById("events");
  const state = document.getElementById("events-state");
  const source = new EventSource("/events");
  source.onopen = () => { state.textContent = "live"; };
  source.onerror = () => { state.textContent = "reconnecting…"; };
  source.onmessage = (e) => {
    const item = document.createElement("li");
    item.textContent = e.lastEventId + ": " + e.data;
    list.prepend(item);
    while (list.children.length > 50) list.lastChild.remove();
  };
})();
