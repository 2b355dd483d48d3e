// Applies the saved theme before the page paints (a classic script in <head>). Without a
// saved choice the page follows prefers-color-scheme.
;(function () {
  try {
    const saved = localStorage.getItem('switchboard-inspector-theme')
    if (saved === 'light' || saved === 'dark') document.documentElement.dataset.theme = saved
  } catch {
    // storage blocked: follow the system
  }
})()
