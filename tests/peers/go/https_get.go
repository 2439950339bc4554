// A Go HTTPS client: GETs each URL given (certificates unchecked), prints status and body size, then stays
// up for --linger seconds so that tools can look at the running process.
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
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	linger := 0
	urls := os.Args[1:]
	if len(urls) >= 2 && urls[0] == "--linger" {
		linger, _ = strconv.Atoi(urls[1])
		urls = urls[2:]
	}
	for _, url := range urls {
		resp, err := client.Get(url)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, len(body))
	}
	fmt.Println("done")
	time.Sleep(time.Duration(linger) * time.Second)
}
