// Command kafkapeer runs kfake, franz-go's Kafka protocol implementation,
// as a process of its own on loopback, so that a benchmark's clients reach
// it over TCP as they would a broker: the kafka connector's benchmarks
// compare the bare client and the flow against it (FLOWRUN_KAFKA_PEER),
// each then paying for its own work only, where the in-process peer of the
// tests shares their process and CPU time. It is a protocol peer for
// benchmarks and tests, not a production broker.
//
//	go run ./scripts/kafkapeer -port 19092
//
// It prints the listening address on stdout once it serves, and runs
// until SIGINT or SIGTERM.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	port := flag.Int("port", 0, "TCP port on 127.0.0.1 (0: any free port)")
	partitions := flag.Int("partitions", 4, "partitions of an auto-created topic")
	flag.Parse()
	if err := run(*port, *partitions); err != nil {
		fmt.Fprintln(os.Stderr, "kafkapeer:", err)
		os.Exit(1)
	}
}

func run(port, partitions int) error {
	if port < 0 || port > 65535 {
		return fmt.Errorf("-port %d: want 0-65535", port)
	}
	if partitions < 1 {
		return fmt.Errorf("-partitions %d: want at least 1", partitions)
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(partitions),
	)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println(c.ListenAddrs()[0])
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}
