// An unmodified-style client: N sequential HTTP/1.1 calls over net.connect,
// each on a new connection the client closes first. Prints the local port of
// each call, or "ERR <code>".
const net = require("net");
const [host, port, n] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const lines = [];
function call(i) {
  if (i === n) {
    process.stdout.write(lines.join("\n") + "\n");
    return;
  }
  const s = net.connect({ host, port });
  let got = "";
  let local = 0;
  s.on("connect", () => {
    local = s.localPort;
    s.write("GET / HTTP/1.1\r\nHost: test\r\n\r\n");
  });
  s.on("data", (d) => {
    got += d;
    if (got.endsWith("ok\n")) {
      lines.push(String(local));
      s.end();
      s.on("close", () => call(i + 1));
    }
  });
  s.on("error", (e) => {
    lines.push("ERR " + e.code);
    s.destroy();
    call(i + 1);
  });
}
call(0);
