// An unmodified-style client, built static (CGO_ENABLED=0): N sequential
// HTTP/1.1 calls over plain net.Dial, each on a new connection the client
// closes first. Prints the local port of each call, or "ERR <error>".
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	addr := os.Args[1]
	n, _ := strconv.Atoi(os.Args[2])
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for i := 0; i < n; i++ {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			fmt.Fprintln(out, "ERR", err)
			continue
		}
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			fmt.Fprintln(out, conn.LocalAddr().(*net.TCPAddr).Port)
		} else {
			fmt.Fprintln(out, "ERR", err)
		}
		conn.Close()
	}
}
