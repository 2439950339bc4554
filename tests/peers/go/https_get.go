// A Go HTTPS client: GETs each URL given (certificates unchecked), prints status and body size, then stays
// up for --linger seconds so that tools can look at the running process. --http2 negotiates HTTP/2 (Go's
// built-in h2) instead of HTTP/1.1; --ua sets the User-Agent.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	linger, http2, ua := 0, false, "apptrace-go"
	urls := os.Args[1:]
	for len(urls) > 0 {
		if len(urls) >= 2 && urls[0] == "--linger" {
			linger, _ = strconv.Atoi(urls[1])
			urls = urls[2:]
		} else if len(urls) >= 2 && urls[0] == "--ua" {
			ua = urls[1]
			urls = urls[2:]
		} else if urls[0] == "--http2" {
			http2 = true
			urls = urls[1:]
		} else {
			break
		}
	}
	// A custom TLS config turns Go's HTTP/2 off unless asked for explicitly.
	transport := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: http2}
	client := &http.Client{Transport: transport}
	for _, url := range urls {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("User-Agent", ua)
		resp, err := client.Do(req)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, len(body), resp.Proto)
	}
	fmt.Println("done")
	time.Sleep(time.Duration(linger) * time.Second)
}
