//! Threads-backend tests: every collective on 1..=4 ranks against hand-computed values,
//! determinism, sub-groups, point to point, and failure within the timeout.
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::*;

const T: Duration = Duration::from_secs(1);

fn vals(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let mut b = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut b, t.numel());
    b
}

/// Runs `f` on every rank and returns each rank's outcome as text, for error checks.
fn errors<F>(world: usize, f: F) -> Vec<String>
where
    F: Fn(ThreadComm) -> Result<()> + Sync,
{
    run_ranks_with_timeout(world, T, |c| Ok(f(c).err().map(|e| e.to_string())))
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap_or_default())
        .collect()
}

#[test]
fn all_reduce_sum_mean_max() {
    for w in 1..=4usize {
        let out = run_ranks_with_timeout(w, T, |c| {
            let r = c.rank() as f64 + 1.0;
            let x = Tensor::from_slice(&[r, 2.0 * r, -r]).to_kind(Kind::Float);
            Ok((
                c.all_reduce(&x, ReduceOp::Sum)?,
                c.all_reduce(&x, ReduceOp::Mean)?,
                c.all_reduce(&x, ReduceOp::Max)?,
            ))
        })
        .unwrap();
        let wf = w as f64;
        let s = wf * (wf + 1.0) / 2.0;
        for (sum, mean, max) in &out {
            assert_eq!(sum.kind(), Kind::Float);
            assert_eq!(vals(sum), vec![s, 2.0 * s, -s], "w={w}");
            assert_eq!(vals(mean), vec![s / wf, 2.0 * s / wf, -s / wf], "w={w}");
            assert_eq!(vals(max), vec![wf, 2.0 * wf, -1.0], "w={w}");
        }
    }
}

#[test]
fn all_reduce_integer_and_half() {
    let out = run_ranks_with_timeout(3, T, |c| {
        let r = c.rank() as i64;
        let i = c.all_reduce(&Tensor::from_slice(&[r, 10 * r]), ReduceOp::Sum)?;
        let h = Tensor::from_slice(&[0.5f32 * (r as f32 + 1.0)]).to_kind(Kind::BFloat16);
        let h = c.all_reduce(&h, ReduceOp::Sum)?;
        let bad = c.all_reduce(&Tensor::from_slice(&[r]), ReduceOp::Mean);
        Ok((i, h, bad.unwrap_err().to_string()))
    })
    .unwrap();
    for (i, h, bad) in out {
        assert_eq!(Vec::<i64>::try_from(i).unwrap(), vec![3, 30]);
        assert_eq!(h.kind(), Kind::BFloat16);
        assert_eq!(vals(&h), vec![3.0]);
        assert!(bad.contains("Mean needs a floating tensor"), "{bad}");
    }
}

#[test]
fn all_gather_along_any_dim() {
    for w in 1..=4usize {
        let out = run_ranks_with_timeout(w, T, |c| {
            let x = Tensor::full([2, 2], c.rank() as f64, (Kind::Float, tch::Device::Cpu));
            Ok((c.all_gather(&x, 0)?, c.all_gather(&x, -1)?))
        })
        .unwrap();
        for (g0, g1) in &out {
            assert_eq!(g0.size(), vec![2 * w as i64, 2]);
            assert_eq!(g1.size(), vec![2, 2 * w as i64]);
            let row: Vec<f64> = (0..w).flat_map(|r| [r as f64, r as f64]).collect();
            assert_eq!(vals(&g1.get(0)), row);
            assert_eq!(vals(&g1.get(1)), row);
            assert_eq!(vals(&g0.select(1, 0)), row);
        }
    }
}

#[test]
fn reduce_scatter_gives_each_rank_its_slice() {
    for w in 1..=4usize {
        let out = run_ranks_with_timeout(w, T, |c| {
            let n = 2 * w as i64;
            let x = Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * (c.rank() as f64 + 1.0);
            // Along dim 1 of a [1, n] tensor too, to exercise non-leading dims.
            Ok((
                c.reduce_scatter(&x, ReduceOp::Sum, 0)?,
                c.reduce_scatter(&x.unsqueeze(0), ReduceOp::Mean, 1)?,
            ))
        })
        .unwrap();
        let s = (w * (w + 1) / 2) as f64;
        for (r, (sum, mean)) in out.iter().enumerate() {
            let lo = 2.0 * r as f64;
            assert_eq!(vals(sum), vec![lo * s, (lo + 1.0) * s], "w={w} r={r}");
            assert_eq!(mean.size(), vec![1, 2]);
            let m = s / w as f64;
            assert_eq!(vals(mean), vec![lo * m, (lo + 1.0) * m], "w={w} r={r}");
        }
    }
    let e = errors(2, |c| {
        c.reduce_scatter(
            &Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
            ReduceOp::Sum,
            0,
        )
        .map(|_| ())
    });
    assert!(e.iter().all(|e| e.contains("not divisible")), "{e:?}");
}

#[test]
fn broadcast_from_any_root_and_barrier() {
    for w in 1..=4usize {
        for root in 0..w {
            let out = run_ranks_with_timeout(w, T, |c| {
                let x = if c.rank() == root {
                    Tensor::from_slice(&[7i32, 8, 9])
                } else {
                    Tensor::zeros([3], (Kind::Int, tch::Device::Cpu))
                };
                c.barrier()?;
                c.broadcast(&x, root)
            })
            .unwrap();
            for b in out {
                assert_eq!(Vec::<i32>::try_from(b).unwrap(), vec![7, 8, 9]);
            }
        }
    }
    let e = errors(2, |c| {
        c.broadcast(&Tensor::from_slice(&[1.0f32]), 2).map(|_| ())
    });
    assert!(
        e.iter().all(|e| e.contains("rank 2 is out of range")),
        "{e:?}"
    );
}

/// Values with long mantissas, so the summation order shows in the last bits.
fn noisy(rank: usize, n: i64) -> Tensor {
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f32 + 1.0) * (rank as f32 + 0.37)).sin() * 10f32.powi((i % 7) as i32 - 3))
        .collect();
    Tensor::from_slice(&v)
}

#[test]
fn reductions_are_bit_identical_across_ranks_and_runs() {
    let w = 4;
    let expected = {
        // Rank order, one rank at a time: the order the backend promises.
        let mut acc = noisy(0, 257);
        for r in 1..w {
            acc += noisy(r, 257);
        }
        bytes(&acc)
    };
    for _run in 0..5 {
        let out = run_ranks_with_timeout(w, T, |c| {
            let x = noisy(c.rank(), 257);
            let s = c.all_reduce(&x, ReduceOp::Sum)?;
            let h = c.all_reduce(&x.to_kind(Kind::BFloat16), ReduceOp::Mean)?;
            Ok((bytes(&s), bytes(&h)))
        })
        .unwrap();
        for (s, h) in &out {
            assert_eq!(s, &expected);
            assert_eq!(h, &out[0].1);
        }
    }
}

#[test]
fn device_mesh_groups_from_2x2() {
    // dp=2, tp=2: ranks 0,1 are tp peers; 0,2 are dp peers.
    let out = run_ranks_with_timeout(4, T, |c| {
        let mesh = DeviceMesh::new(&c, MeshShape::new(2, 2, 1)?)?;
        let me = Tensor::from_slice(&[c.rank() as i64]);
        let tp = mesh.tp_group.all_gather(&me, 0)?;
        let dp = mesh.dp_group.all_gather(&me, 0)?;
        let pp = mesh.pp_group.all_gather(&me, 0)?;
        let tp_sum = mesh.tp_group.all_reduce(&me, ReduceOp::Sum)?;
        // The sub-groups and the world group stay usable side by side.
        let world = c.all_reduce(&me, ReduceOp::Sum)?;
        Ok((
            mesh.coord,
            mesh.tp_group.rank(),
            mesh.dp_group.world_size(),
            Vec::<i64>::try_from(tp)?,
            Vec::<i64>::try_from(dp)?,
            Vec::<i64>::try_from(pp)?,
            Vec::<i64>::try_from(tp_sum)?,
            Vec::<i64>::try_from(world)?,
        ))
    })
    .unwrap();
    let shape = MeshShape::new(2, 2, 1).unwrap();
    for (r, (coord, tp_rank, dp_size, tp, dp, pp, tp_sum, world)) in out.into_iter().enumerate() {
        assert_eq!(coord, shape.coord(r).unwrap());
        assert_eq!(tp_rank, coord.tp);
        assert_eq!(dp_size, 2);
        let as_i64 = |v: Vec<usize>| v.into_iter().map(|x| x as i64).collect::<Vec<_>>();
        assert_eq!(tp, as_i64(shape.tp_ranks(r).unwrap()));
        assert_eq!(dp, as_i64(shape.dp_ranks(r).unwrap()));
        assert_eq!(pp, vec![r as i64]);
        assert_eq!(tp_sum, vec![tp.iter().sum::<i64>()]);
        assert_eq!(world, vec![6]);
    }
    assert_eq!(
        shape.tp_ranks(0).unwrap(),
        vec![0, 1],
        "tp is the fastest-varying index"
    );
    assert_eq!(shape.dp_ranks(1).unwrap(), vec![1, 3]);
}

#[test]
fn split_orders_by_key_and_skips_uncolored() {
    let out = run_ranks_with_timeout(4, T, |c| {
        // Ranks 1..4 form a group ordered by descending rank; rank 0 stays out.
        let color = (c.rank() > 0).then_some(0);
        let g = c.split(color, 10 - c.rank())?;
        Ok(g.map(|g| (g.rank(), g.world_size())))
    })
    .unwrap();
    assert_eq!(out, vec![None, Some((2, 3)), Some((1, 3)), Some((0, 3))]);
}

#[test]
fn send_recv_ping_pong() {
    let out = run_ranks_with_timeout(2, T, |c| {
        let mut x = Tensor::zeros([2, 1, 3], (Kind::Int64, tch::Device::Cpu));
        for _ in 0..10 {
            if c.rank() == 0 {
                c.send(&x, 1)?;
                x = c.recv(1)?;
            } else {
                x = c.recv(0)? + 1;
                c.send(&x, 0)?;
            }
        }
        Ok(x)
    })
    .unwrap();
    assert_eq!(out[0].size(), vec![2, 1, 3]);
    assert_eq!(out[0].kind(), Kind::Int64);
    assert_eq!(
        Vec::<i64>::try_from(out[0].flatten(0, -1)).unwrap(),
        vec![10; 6]
    );
    let e = errors(2, |c| c.send(&Tensor::from_slice(&[1.0f32]), 5));
    assert!(e[0].contains("rank 5 is out of range"), "{e:?}");
}

#[test]
fn a_rank_that_returns_early_fails_the_others_fast() {
    let start = Instant::now();
    let out = run_ranks_with_timeout(3, Duration::from_secs(30), |c| {
        if c.rank() == 2 {
            return Ok(None);
        }
        Ok(c.all_reduce(&Tensor::from_slice(&[1.0f32]), ReduceOp::Sum)
            .err()
            .map(|e| e.to_string()))
    })
    .unwrap();
    // Dropping the communicator disconnects at once, long before the 30 s timeout.
    assert!(start.elapsed() < Duration::from_secs(5));
    // The first rank to fail saw rank 2 leave; the other may instead see that first rank,
    // which has returned with its error by then (both are right).
    let errs: Vec<&str> = out[..2]
        .iter()
        .map(|e| e.as_deref().unwrap_or(""))
        .collect();
    assert!(
        errs.iter().all(|e| e.contains("has left the group")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("rank 2 has left the group")),
        "{errs:?}"
    );
}

#[test]
fn a_panicking_rank_fails_the_run_with_its_panic() {
    let start = Instant::now();
    let e = run_ranks_with_timeout(4, Duration::from_secs(30), |c| {
        if c.rank() == 1 {
            panic!("boom on rank 1");
        }
        c.barrier()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("rank 1 panicked: boom on rank 1"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_hung_rank_times_out() {
    let start = Instant::now();
    let out = run_ranks_with_timeout(2, T, |c| {
        if c.rank() == 1 {
            std::thread::sleep(Duration::from_secs(3));
            return Ok(None);
        }
        let r = c.all_gather(&Tensor::from_slice(&[1.0f32]), 0);
        Ok(Some((r.unwrap_err().to_string(), start.elapsed())))
    })
    .unwrap();
    let (e, took) = out[0].clone().unwrap();
    assert!(e.contains("timed out") && e.contains("rank 1"), "{e}");
    assert!(took >= T && took < Duration::from_secs(5), "{took:?}");
    let e = errors(2, |c| {
        if c.rank() == 0 {
            c.recv(1).map(|_| ())
        } else {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(())
        }
    });
    assert!(e[0].contains("timed out") && e[0].contains("recv"), "{e:?}");
}

#[test]
fn mismatched_shapes_and_collectives_are_clear_errors() {
    let e = errors(3, |c| {
        let n = if c.rank() == 1 { 3 } else { 2 };
        c.all_reduce(
            &Tensor::zeros([n], (Kind::Float, tch::Device::Cpu)),
            ReduceOp::Sum,
        )
        .map(|_| ())
    });
    for e in &e {
        assert!(
            e.contains("different shapes") && e.contains("rank 1 [3]") && e.contains("rank 0 [2]"),
            "{e}"
        );
    }
    let e = errors(2, |c| {
        let x = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        if c.rank() == 0 {
            c.all_reduce(&x, ReduceOp::Sum).map(|_| ())
        } else {
            c.all_gather(&x, 0).map(|_| ())
        }
    });
    assert!(e[0].contains("rank 1 sent all_gather"), "{e:?}");
    assert!(e[1].contains("rank 0 sent all_reduce"), "{e:?}");
    let e = errors(2, |c| {
        let kind = if c.rank() == 0 {
            Kind::Float
        } else {
            Kind::Double
        };
        c.broadcast(&Tensor::zeros([2], (kind, tch::Device::Cpu)), 0)
            .map(|_| ())
    });
    assert!(e.iter().all(|e| e.contains("Double")), "{e:?}");
}

#[test]
fn bad_arguments() {
    assert!(ThreadGroup::new(0).is_err());
    assert!(ThreadGroup::with_timeout(2, Duration::ZERO).is_err());
    let e = errors(1, |c| {
        c.all_gather(&Tensor::from_slice(&[1.0f32]), 1).map(|_| ())
    });
    assert!(e[0].contains("dim 1 is out of range"), "{e:?}");
    let e = run_ranks_with_timeout(2, T, |c| {
        DeviceMesh::new(&c, MeshShape::new(2, 2, 1)?).map(|_| ())
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs 4 ranks"), "{e}");
}

#[test]
fn the_first_failure_is_the_error_returned() {
    // Rank 2 fails on its own; the others then fail because it left. The run reports rank 2's
    // error, the root cause, not the consequences.
    let e = run_ranks_with_timeout(4, Duration::from_secs(30), |c| {
        if c.rank() == 2 {
            return Err(crate::invalid("bad input on rank 2"));
        }
        c.barrier()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad input on rank 2"), "{e}");
}

#[test]
fn pipeline_groups_carry_send_recv() {
    // tp=2, pp=2: stage 0 ranks {0, 1} send to stage 1 ranks {2, 3} over their pp groups.
    let out = run_ranks_with_timeout(4, T, |c| {
        let mesh = DeviceMesh::new(&c, MeshShape::new(1, 2, 2)?)?;
        let pp = &mesh.pp_group;
        if mesh.coord.pp == 0 {
            pp.send(&Tensor::from_slice(&[c.rank() as i64 * 100]), 1)?;
            Ok(None)
        } else {
            Ok(Some(Vec::<i64>::try_from(pp.recv(0)?)?))
        }
    })
    .unwrap();
    assert_eq!(out, vec![None, None, Some(vec![0]), Some(vec![100])]);
}
