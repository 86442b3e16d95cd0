//! Writing the simulated stream straight into Kafka: every event a record of the input contract,
//! keyed by its customer id (so a customer's events stay in order in one partition).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// A `Write` sink for [`crate::run::run`]: splits the JSON lines and produces each as a record.
/// With `rate`, sends at most that many events per second (a steady load for load tests).
pub struct KafkaSink {
    producer: BaseProducer,
    topic: String,
    line: Vec<u8>,
    rate: Option<f64>,
    started: Instant,
    pub sent: u64,
}

impl KafkaSink {
    pub fn new(brokers: &str, topic: &str, rate: Option<f64>) -> Result<KafkaSink, String> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("partitioner", "murmur2_random")
            .set("queue.buffering.max.messages", "500000")
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| format!("kafka producer for {brokers}: {e}"))?;
        Ok(KafkaSink { producer, topic: topic.to_string(), line: Vec::with_capacity(512), rate, started: Instant::now(), sent: 0 })
    }

    fn send_line(&mut self, line: &[u8]) -> io::Result<()> {
        let key = customer_id(line).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "event without customer_id"))?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).key(key).payload(line);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(io::Error::other(format!("produce to {}: {e}", self.topic))),
            }
        }
        self.sent += 1;
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                self.producer.poll(wait);
            }
        } else if self.sent % 1024 == 0 {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Waits until every record is acknowledged.
    pub fn finish(&mut self) -> Result<u64, String> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.send_line(&line).map_err(|e| e.to_string())?;
        }
        self.producer.flush(Duration::from_secs(120)).map_err(|e| format!("flushing to {}: {e}", self.topic))?;
        Ok(self.sent)
    }
}

impl Write for KafkaSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut pending = std::mem::take(&mut self.line);
        let done = crate::stream::split_lines(&mut pending, buf, |line| self.send_line(line));
        self.line = pending;
        done.map(|_| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The `customer_id` of one event line (the simulator writes it second, unescaped).
pub fn customer_id(line: &[u8]) -> Option<&[u8]> {
    const FIELD: &[u8] = b"\"customer_id\":\"";
    let at = line.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let end = line[at..].iter().position(|b| *b == b'"')?;
    Some(&line[at..at + end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_customer_id() {
        assert_eq!(super::customer_id(br#"{"event_id":"c1-2","customer_id":"c17","ts":1}"#), Some(&b"c17"[..]));
        assert_eq!(super::customer_id(br#"{"event_id":"x"}"#), None);
    }
}
